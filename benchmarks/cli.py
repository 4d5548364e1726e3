"""clamp-bench: run a cell or a suite, rebuild the leaderboard, list what is available.

    clamp-bench suite micro-classification
    clamp-bench run --task classification --model micro_deit_patch4_32 --method gaussian --w-bits 4 --a-bits 8
    clamp-bench leaderboard
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from benchmarks import leaderboard, suites
from benchmarks.cell import Cell
from benchmarks.runner import RunOptions, run_cells
from benchmarks.store import ResultStore
from clamp.registry import available_methods, get_method
from tasks import TASKS, make_task


def _options(value: str) -> tuple[str, object]:
    key, _, raw = value.partition("=")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _validate(cells: list[Cell], options: RunOptions) -> None:
    """Fail before any work on what would fail every cell: unknown models, methods, data paths."""
    for method in {c.method for c in cells}:
        get_method(method)
    for task, model, n_eval in {(c.task, c.model, c.n_eval) for c in cells}:
        make_task(task, model, data_root=options.data_root, checkpoint=options.checkpoint, n_eval=n_eval)


def _run(cells: list[Cell], args: argparse.Namespace) -> int:
    options = RunOptions(device=args.device, data_root=args.data_root, checkpoint=args.checkpoint, force=args.force)
    _validate(cells, options)
    store = ResultStore()
    records = run_cells(cells, options, store)
    for task in sorted({c.task for c in cells}):
        print(f"wrote {leaderboard.write_csv(store, task)}")
    failed = [r for r in records if r["status"] != "ok"]
    for r in failed:
        print(f"failed: {r['config']['model']} {r['config']['method']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clamp-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    common.add_argument("--data-root", help="dataset folder (ImageNet: with train/ and val/)")
    common.add_argument("--checkpoint", help="weights file for the model instead of the local HF cache")
    common.add_argument("--force", action="store_true", help="recompute cells that are already stored")

    one = sub.add_parser("run", parents=[common], help="run one cell")
    one.add_argument("--task", default="classification", choices=TASKS)
    one.add_argument("--model", required=True)
    one.add_argument("--method", required=True)
    one.add_argument("--w-bits", type=int, required=True)
    one.add_argument("--a-bits", type=int, required=True)
    one.add_argument("--mixed", action="store_true", help="mixed precision at the compression of W/A bits")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--n-eval", type=int, help="evaluate on a fixed random subset of this size")
    one.add_argument("--option", type=_options, action="append", default=[], metavar="KEY=VALUE",
                     help="method option (JSON value), repeatable")
    one.add_argument("--quant-option", type=_options, action="append", default=[], metavar="KEY=VALUE",
                     help="quantizer option: w_observer, a_observer, symmetric, softmax_quant")

    suite = sub.add_parser("suite", parents=[common], help="run every cell of a suite")
    suite.add_argument("name", help=f"one of: {', '.join(suites.available_suites())}, or a .toml path")

    sub.add_parser("leaderboard", help="rebuild results/<task>.csv from the stored cells")
    sub.add_parser("list", help="list tasks, methods and suites")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "run":
            cells = [Cell(args.task, args.model, args.method, args.w_bits, args.a_bits, args.seed, args.mixed,
                          args.n_eval, dict(args.option), dict(args.quant_option))]
            sys.exit(_run(cells, args))
        if args.command == "suite":
            sys.exit(_run(suites.expand(suites.load_suite(args.name)), args))
        if args.command == "leaderboard":
            store = ResultStore()
            for task in TASKS:
                print(f"wrote {leaderboard.write_csv(store, task)}")
        if args.command == "list":
            print("tasks:   " + ", ".join(TASKS))
            print("methods: " + ", ".join(available_methods()))
            print("suites:  " + ", ".join(suites.available_suites()))
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        sys.exit(f"clamp-bench: error: {err}")
