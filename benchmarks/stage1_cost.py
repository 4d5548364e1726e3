"""Memory and time of one CLAMP-ViT stage-1 step at paper resolution, and what a default cell
would cost: the numbers behind the README's memory table and GPU-hours estimate.

    python -m benchmarks.stage1_cost                 # CPU: peak RSS over the loaded model
    python -m benchmarks.stage1_cost --device cuda   # a GPU: peak allocated memory, projected cell time

One generation step (forward, the stage-1 loss of every block, backward) of n images on random
weights (memory and time do not depend on the weights), for n = 1, 2, 4, both ``negatives``
forms, each in a fresh process; a line through the three points extrapolates to the paper's
n = 32. The projected cell time adds stage 2 at the defaults: every fitness evaluation is one
forward of the 32 images, every refinement step one more generation step.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from clamp.io import atomic_write_text

CASES = {  # (task, model) -> the side of its synthetic images
    ("detection", "mask-rcnn_swin-t-p4-w7_fpn_1x_coco"): 512,
    ("segmentation", "vit_deit-s16_upernet_8xb2-80k_ade20k-512x512"): 512,
    ("classification", "deit_small_patch16_224.fb_in1k"): 224,
    ("classification", "swin_tiny_patch4_window7_224.ms_in1k"): 224,
}
SIDES = {model: side for (_, model), side in CASES.items()}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Highest resident set size while the block runs, sampled every 2 ms."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def measure(task_name: str, model: str, n: int, negatives: str, device: str, data_root: str) -> dict:
    """One stage-1 step: seconds, memory above the loaded model (bytes), and one forward's seconds."""
    from clamp.generate.features import MHSACapture
    from clamp.generate.loop import noise
    from clamp.method import ClampViT
    from tasks import make_task

    task = make_task(task_name, model, data_root=data_root, checkpoint="random", device=device)
    net = task.backbone(task.build_model())
    method = ClampViT(n=n, negatives=negatives)
    labels, tv_goal = method._prior_inputs(task, 0)
    x = noise(task.input_spec, n, 0, device).requires_grad_(True)
    cuda = torch.device(device).type == "cuda"
    with MHSACapture(net) as capture:
        loss_fn = method.data_loss(task, net, capture, labels, tv_goal)
        loss_fn(x)[0].backward()  # warm-up: allocator, kernels
        x.grad = None
        if not cuda:  # give the warm-up's freed heap back to the OS, so that the step's peak shows in RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with PeakRSS() as rss:
            start = time.perf_counter()
            loss_fn(x)[0].backward()
            if cuda:
                torch.cuda.synchronize()
            step_s = time.perf_counter() - start
        with torch.no_grad():
            start = time.perf_counter()
            net(x)
            if cuda:
                torch.cuda.synchronize()
            forward_s = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated() - base if cuda else rss.peak - rss.start
    return {"task": task_name, "model": model, "n": n, "negatives": negatives, "device": device,
            "blocks": len(capture.blocks), "step_s": round(step_s, 3), "forward_s": round(forward_s, 3),
            "memory_gb": round(memory / 2**30, 3)}


def projected_cell_s(step_s: float, forward_s: float, blocks: int) -> float:
    """A default CLAMP-ViT cell (clamp/method.py defaults) from its n = 32 step and forward times:
    1,000 generation steps; per pass and block about 21 fitness evaluations (the start, one child
    per cycle, two rescores of up to cycles + 1 candidates) and 2 adaptations of 5 refinement
    steps (a generation step plus a quantized forward each)."""
    from clamp.method import ClampViT

    m = ClampViT()
    fitness = 1 + m.cycles + 2 * (m.cycles + 1)
    steps = sum(s for s, _ in m.rounds)
    return steps * step_s + m.passes * blocks * (fitness * forward_s + 2 * m.refine_steps * (step_s + forward_s))


def summarise(rows: list[dict]) -> list[dict]:
    """Per (model, negatives): the measured points, memory at n = 32 from a line through them (a
    fixed part plus a part per image), step time at n = 32 from the largest n measured (per-image
    time x 32: steps scale linearly in n, and a two-point fit of noisy times can go negative), and
    the projected default cell."""
    table = []
    for (model, negatives), group in _groups(rows).items():
        if len(group) < 2:
            continue
        slope, intercept = np.polyfit([r["n"] for r in group], [r["memory_gb"] for r in group], 1)
        last = max(group, key=lambda r: r["n"])
        step, forward = (32 * last[k] / last["n"] for k in ("step_s", "forward_s"))
        table.append({"model": model, "side": SIDES[model], "negatives": negatives,
                      **{f"memory_gb_n{r['n']}": r["memory_gb"] for r in group},
                      **{f"step_s_n{r['n']}": r["step_s"] for r in group},
                      "memory_gb_n32": round(float(slope * 32 + intercept), 1), "step_s_n32": round(step, 1),
                      "cell_h": round(projected_cell_s(step, forward, group[0]["blocks"]) / 3600, 1)})
    return table


def _groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["negatives"]), []).append(r)
    return groups


def _data_roots(folder: Path) -> dict[str, str]:
    """Tiny datasets in the real layouts: the tasks check their data folders before building."""
    from tasks import task_class

    rng = np.random.default_rng(0)
    return {task: str(task_class(task).fake_dataset(folder / task, rng)) for task in sorted({t for t, _ in CASES})}


def _measure_all(args: argparse.Namespace) -> list[dict]:
    """Every (model, negatives, n) asked for, each in a fresh process; a failed point is reported
    and left out."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="clamp-cost-") as tmp:
        roots = _data_roots(Path(tmp))
        for task, model in CASES:
            if model not in args.models:
                continue
            for negatives in args.negatives:
                for n in args.n:
                    cmd = [sys.executable, "-m", "benchmarks.stage1_cost", "--device", args.device,
                           "--one", task, model, str(n), negatives, roots[task]]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        print(f"{model} n={n} {negatives}: failed: {out.stderr.strip().splitlines()[-1]}", flush=True)
                        continue
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (peak allocated memory)")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4], help="batch sizes measured")
    parser.add_argument("--negatives", nargs="+", default=["neighbourhood", "image"], help="forms of the loss")
    parser.add_argument("--models", nargs="+", default=[m for _, m in CASES], help="a subset of the models")
    parser.add_argument("--out", help="also write the measurements and projections as JSON here")
    parser.add_argument("--summarise", metavar="JSON", help="only tabulate the measurements of an earlier --out")
    parser.add_argument("--one", nargs=5, metavar=("TASK", "MODEL", "N", "NEGATIVES", "DATA_ROOT"),
                        help=argparse.SUPPRESS)  # a single measurement (this script runs itself per case)
    args = parser.parse_args()
    if args.one:
        task, model, n, negatives, root = args.one
        print(json.dumps(measure(task, model, int(n), negatives, args.device, root)))
        return
    rows = json.loads(Path(args.summarise).read_text())["measurements"] if args.summarise else _measure_all(args)
    table = summarise(rows)
    print("| " + " | ".join(table[0]) + " |")
    print("|---" * len(table[0]) + "|")
    for t in table:
        print("| " + " | ".join(str(v) for v in t.values()) + " |")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps({"device": args.device, "measurements": rows, "table": table},
                                                     indent=1))


if __name__ == "__main__":
    main()
