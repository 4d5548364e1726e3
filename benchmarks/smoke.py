"""The paper-scale smoke test: every paper model at paper resolution, with random weights, on
tiny generated datasets in the real ImageNet / COCO / ADE20K layouts, every method at the
smallest budgets it accepts, W4/A8 and one mixed-precision cell per model. It proves the paper
path runs end to end (data loading, the frameworks' evaluators, every method, every backbone)
before a GPU machine spends hours on it; its numbers mean nothing and go to a temporary folder.

    python -m benchmarks.smoke [--ci] [--device cuda] [--keep DIR]    # tox -e paper-smoke

``--ci`` runs the subset tests/test_paper_smoke.py runs on every commit, at W4/A8: every method
on DeiT-T; real data and Gaussian noise (the frameworks' data pipelines and evaluators) on Mask
R-CNN Swin-T and UperNet DeiT-S. The generation methods on those backbones take minutes each on
CPU even at their smallest budgets (every fitness evaluation is a forward at 512 px); they run in
the whole smoke suite, and at micro scale in the tests.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import suites
from benchmarks.runner import RunOptions, run_cells, with_weights
from benchmarks.store import ResultStore
from tasks import TASKS, task_class

# a task's smoke suite is benchmarks/suites/paper-smoke-<task>.toml; its CI subset and its fake data are
# the task's own (``smoke_subset``, ``fake_dataset``)
SUITES = {task: f"paper-smoke-{task}" for task in TASKS if f"paper-smoke-{task}" in suites.available_suites()}


def run(ci: bool, device: str | None, folder: Path) -> list[dict]:
    """Generate the data under ``folder``, run the smoke cells there; return one summary per cell."""
    rng = np.random.default_rng(0)
    store = ResultStore(folder / "results")
    summary = []
    for task, name in SUITES.items():
        suite = suites.load_suite(name)
        cls = task_class(task)
        model, methods = cls.smoke_subset
        cells = [c for c in suites.expand(suite)
                 if not ci or (c.model == model and c.method in methods and not c.mixed)]
        cells = with_weights(cells, suite["checkpoints"])
        data_root = str(cls.fake_dataset(folder / task, rng))
        options = RunOptions(device=device, data_root=data_root, checkpoints=suite["checkpoints"],
                             workers=0)  # a few images: loader processes would cost more than they save
        start = time.time()
        for cell, record in zip(cells, run_cells(cells, options, store), strict=True):
            summary.append({"task": task, "model": cell.model, "method": cell.method, "precision": cell.precision,
                            "status": record["status"] if record else "missing",
                            "error": (record or {}).get("error"), "wall_s": (record or {}).get("wall_s")})
        print(f"{name}: {len(cells)} cells in {time.time() - start:.0f} s", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ci", action="store_true", help="the subset the tests run (see above)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--keep", help="a folder to keep the data and results in (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clamp-smoke-") as tmp:
        summary = run(args.ci, args.device, Path(args.keep or tmp))
    for row in summary:
        print(f"{row['status']:7} {row['task']:15} {row['model']:70} {row['method']:12} {row['precision']:8} "
              f"{row['wall_s'] or '':>8} {row['error'] or ''}")
    failed = [r for r in summary if r["status"] != "ok"]
    print(f"{len(summary) - len(failed)} of {len(summary)} smoke cells ran")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
