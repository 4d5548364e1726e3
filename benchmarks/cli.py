"""clamp-bench: run a cell or a suite, compare a new method, rebuild the leaderboard.

    clamp-bench suite micro-classification
    clamp-bench run --model micro_deit_patch4_32 --method gaussian --w-bits 4 --a-bits 8
    clamp-bench compare --method my-method --suite micro-classification
    clamp-bench leaderboard
    clamp-bench fingerprint
    clamp-bench export CELL_KEY
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import torch

from benchmarks import deploy, dry_run, leaderboard, provenance, published, site, suites
from benchmarks.cell import Cell, config_precision, precision_name
from benchmarks.fingerprint import Fingerprints, backfill, path_name, path_of
from benchmarks.provenance import is_dirty
from benchmarks.runner import RunOptions, checkpoint_for, init_distributed, run_cells, with_weights
from benchmarks.scaleout import EXECUTORS, make_executor
from benchmarks.store import REPO_RESULTS, ResultStore
from clamp.io import cache_dir
from clamp.registry import available_methods, get_method, make_method, refusal
from tasks import TASKS, make_task, task_class
from tasks.weights import offline


def known_models(task: str) -> list[str]:
    """The micro, pretrained-tier and paper-scale models of ``task`` (any other timm tag or mm config
    works too)."""
    cls = task_class(task)
    return [*cls.micro_models, *cls.paper_models]


def _dict_action() -> type[argparse.Action]:
    """mmengine's DictAction, the parser of the mm tools' --cfg-options (imported when the parser is
    built: mmengine comes with the mm extra)."""
    try:
        from mmengine.config import DictAction
    except ImportError:
        return argparse._StoreAction  # without mmengine there is no mm task to configure
    return DictAction


def _keyvalue(value: str) -> tuple[str, object]:
    """KEY=VALUE with a JSON value (a bare word is a string); a missing '=' is an error."""
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r} is not KEY=VALUE")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _check_device(device: str | None) -> None:
    if device is None:
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"device {device} is not available here: use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device type {dev.type!r} is not supported: use cpu or cuda")


def _check_writable(root: Path) -> None:
    """The results folder takes a new file (and has room for one), before anything is computed."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write results to {root} ({err.strerror}): pass a writable --results-dir") from None


def _validate(cells: list[Cell], options: RunOptions, store: ResultStore) -> None:
    """Fail before any work, with one line, on what would fail every cell: unknown or misconfigured
    methods, unknown models, unreadable data or weights, a bad device, a read-only results folder."""
    _check_device(options.device)
    _check_writable(store.root)
    if options.data_root and not Path(options.data_root).is_dir():  # the micro tier never reads it: catch it here
        raise ValueError(f"--data-root {options.data_root} is not a folder: pass the dataset's root folder")
    for method, opts in {(c.method, json.dumps(c.method_options, sort_keys=True)) for c in cells}:
        make_method(method, **json.loads(opts))
    for cell in {(c.task, c.model, c.n_eval, json.dumps(c.task_options, sort_keys=True)): c for c in cells}.values():
        kwargs = {**options.task_kwargs(cell.model), "device": "cpu"}  # nothing is moved here
        task = make_task(cell.task, cell.model, n_eval=cell.n_eval, **kwargs, **cell.task_options)
        task.check_data()
        task.build_model()  # weights present and loadable
        for c in (c for c in cells if c.task == cell.task):
            why = refusal(get_method(c.method), c.task, bool(task.num_classes), c.mixed)
            if why:
                raise ValueError(why + (f" ({precision_name(c.w_bits, c.a_bits, False)}, not {c.precision})"
                                        if c.mixed else ""))


def _store(args: argparse.Namespace, personal: bool) -> ResultStore:
    """--results-dir, else $CLAMP_RESULTS, else results/ for suites and the leaderboard and a
    personal folder for single runs and comparisons (so they never touch the committed rows)."""
    if args.results_dir:
        return ResultStore(args.results_dir)
    if personal and not os.environ.get("CLAMP_RESULTS"):
        return ResultStore(cache_dir("results"))
    return ResultStore()


def _checkpoints(args: argparse.Namespace, suite: dict | None = None) -> dict[str, str]:
    """Model -> weights: the suite's ``checkpoints`` table, then each --checkpoint (PATH for every
    model, MODEL=PATH for one, ``random`` for the architecture at a fixed random init)."""
    table = dict((suite or {}).get("checkpoints", {}))
    for value in args.checkpoint:
        model, sep, path = value.partition("=")
        table[model if sep else "*"] = path if sep else value
    return table


def _run(cells: list[Cell], args: argparse.Namespace, store: ResultStore, only: set[str] | None = None,
         checkpoints: dict[str, str] | None = None) -> list[dict]:
    checkpoints = _checkpoints(args) if checkpoints is None else checkpoints
    cells = with_weights(cells, checkpoints)
    options = RunOptions(device=args.device, data_root=args.data_root, checkpoints=checkpoints, force=args.force,
                         batch_size=args.batch_size, workers=args.workers)
    _validate(cells, options, store)
    executor = make_executor(args.executor, partition=args.partition, gpus=args.gpus, timeout_min=args.timeout_min)
    records = run_cells(cells, options, store, executor, only)
    for task in sorted({c.task for c in cells}):
        print(f"wrote {leaderboard.write_csv(store, task)}")
    for r in records:
        if r and r["status"] != "ok":
            cfg = r["config"]
            print(f"failed: {cfg['model']} {cfg['method']} {config_precision(cfg)}: {r['error']} "
                  f"(attempt kept in {store.failed_path(Cell.from_config(cfg))})",
                  file=sys.stderr)
    return records


# with the task (one per suite): what a comparison holds equal
SAME_CONDITIONS = ["model", "precision", "layout", "weights_id", "n_eval"]


def compare(args: argparse.Namespace) -> None:
    """Run ``args.method`` on the cells of a suite and print its delta against every other method of
    the suite under identical conditions: same task, model, precision, layout, weights and
    evaluation set, the other methods at their default options (ablations never enter a mean).
    The others are read from --results-dir, else the committed leaderboard (or $CLAMP_RESULTS)."""
    suite_cells = suites.expand(suites.load_suite(args.suite))
    options = dict(args.option)
    mine = list({c.key: c for c in (dataclasses.replace(c, method=args.method, method_options=options)
                                    for c in suite_cells)}.values())
    records = [r for r in _run(mine, args, _store(args, personal=True)) if r and r["status"] == "ok"]
    board = _store(args, personal=False)
    theirs = [r for r in (board.load(c) for c in suite_cells if c.method != args.method)
              if r and r["status"] == "ok"]
    if not theirs:
        print(f"no leaderboard cells of suite {args.suite} in {board.root} yet: run `clamp-bench suite {args.suite}`")
    print(comparison(pd.DataFrame([leaderboard.row(r) for r in records]),
                     pd.DataFrame([leaderboard.row(r) for r in theirs]), args.method))


def comparison(mine: pd.DataFrame, theirs: pd.DataFrame, method: str) -> str:
    """One line per (model, precision, layout, weights, evaluation set): the method's mean over
    seeds, each other method's (default options only: no option that selects other code, the
    suite's budget allowed) and the deltas; then what was left out."""
    if mine.empty:
        return f"no finished cell of {method} to compare"
    def listed(rows: pd.DataFrame, *columns: str) -> str:
        return ", ".join(sorted(set(rows[list(columns)].astype(str).agg(" ".join, axis=1))))

    left_out = []
    if not theirs.empty:
        ablations = theirs[theirs["ablation"] != ""]
        if len(ablations):
            left_out.append(f"{len(ablations)} rows with non-default options "
                            f"({listed(ablations, 'method', 'ablation')})")
        theirs = theirs[theirs["ablation"] == ""]
        conditions = set(map(tuple, mine[SAME_CONDITIONS].astype(str).to_numpy()))
        unmatched = theirs[[tuple(r) not in conditions for r in theirs[SAME_CONDITIONS].astype(str).to_numpy()]]
        if len(unmatched):
            left_out.append(f"{len(unmatched)} rows under conditions that {method} has no cell for "
                            f"({listed(unmatched, 'model', 'precision', 'layout')})")
        theirs = theirs.drop(unmatched.index)
    both = pd.concat([mine, theirs]).assign(n_eval=lambda f: f["n_eval"].astype(str))
    stats = both.groupby([*SAME_CONDITIONS, "method"])["quant_value"].agg(["mean", "count"]).unstack("method")
    out = pd.DataFrame(index=stats.index)
    out[method] = stats["mean"][method]
    out["seeds"] = stats["count"][method].astype(int)
    for other in sorted(set(stats["mean"].columns) - {method}):
        out[other] = stats["mean"][other]
        out[f"{other} seeds"] = stats["count"][other].fillna(0).astype(int)
        out[f"delta vs {other}"] = out[method] - out[other]
    text = out.reset_index().round(2).to_string(index=False)
    return text + "".join(f"\nleft out: {line}" for line in left_out)


def fingerprint(args: argparse.Namespace) -> None:
    """Every code path the stored rows take: today's fingerprint, its rows and how many are stale
    (after --backfill: the fingerprints of old records' paths at their own commits)."""
    store = _store(args, personal=False)
    fps = Fingerprints(store.root)
    records = [r for task in TASKS for r in store.records(task) if r["status"] == "ok" and not is_dirty(r)]
    if args.backfill:
        for code, n in backfill(records, fps).items():
            print(f"backfilled {n} paths at code {code}")
    stale = fps.stale(records)
    today = fps.today(path_of(r["config"]) for r in records)
    rows = pd.DataFrame([{"path": path_name(path_of(r["config"])), "stale": stale[r["key"]]} for r in records])
    if rows.empty:
        print(f"no rows in {store.root}")
        return
    per_path = rows.groupby("path")["stale"].agg(rows="count", stale="sum").reset_index()
    per_path.insert(1, "fingerprint", per_path["path"].map(lambda p: today.get(p) or "fails today"))
    print(per_path.to_string(index=False))
    print(f"{int(per_path['stale'].sum())} of {len(rows)} rows stale, on {len(per_path)} paths "
          f"(canaries compared on one machine; this one: {fps.machine}, {provenance.machine_description()})")


def _deploy_options(args: argparse.Namespace, suite: dict | None = None) -> deploy.DeployOptions:
    """The suite's ``deploy`` table, then the command line's --n-images and --threads."""
    given = {k: getattr(args, k, None) for k in ("n_images", "threads")}
    return deploy.DeployOptions(**{**(suite or {}).get("deploy", {}), **{k: v for k, v in given.items() if v}})


def _check_deployable(cells: list[Cell]) -> None:
    """Refuse, before any cell is computed, cells that have no integer form."""
    for cell in cells:
        why = deploy.refusal(cell)
        if why:
            raise ValueError(f"cannot export {cell.model} {cell.method} {cell.precision}: {why}")


def _deploy(records: list[dict], store: ResultStore, options: deploy.DeployOptions, data_root: str | None) -> bool:
    """The deployment check of every finished record that has none of its own yet; one that cannot
    be checked is said in one line and the others go on. True when every check was made."""
    ok = True
    for record in records:
        if record and record["status"] == "ok" and deploy.load(store, record) is None:
            try:
                print(deploy.summary(deploy.check(record, store, options, data_root)))
            except ValueError as err:
                ok = False
                print(f"not checked: {err}", file=sys.stderr)
    return ok


def export(args: argparse.Namespace) -> None:
    """Export one stored cell (found in --results-dir, else the personal folder, then results/) and
    run its deployment check."""
    stores = [ResultStore(args.results_dir)] if args.results_dir else [_store(args, personal=True), ResultStore()]
    record, store = deploy.find_record(stores, args.key)
    print(deploy.summary(deploy.check(record, store, _deploy_options(args), args.data_root)))


def fetch(args: argparse.Namespace) -> int:
    """Fill the libraries' caches with the published weights of every model of a suite (run online,
    before a run on a machine without network); offline, one line per missing file and its source."""
    suite = suites.load_suite(args.name)
    checkpoints = _checkpoints(args, suite)
    missing = 0
    for task, model in sorted({(c.task, c.model) for c in suites.expand(suite)}):
        given = checkpoint_for(checkpoints, model)
        weights = None if given else task_class(task).weight_file(model)
        if given or weights is None:
            print(f"given    {model}: {given or 'committed with the repository'}")
        elif weights.cached:
            print(f"cached   {model}: {weights.path}")
        elif offline():
            missing += 1
            print(f"missing  {model}: {weights.path or 'the Hugging Face hub cache'} (from {weights.source})")
        else:
            print(f"fetched  {model}: {weights.fetch()}")
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clamp-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    common.add_argument("--data-root", help="dataset folder: ImageNet (train/, val/), COCO (val2017/, annotations/) "
                                            "or ADE20K (ADEChallengeData2016)")
    common.add_argument("--checkpoint", action="append", default=[], metavar="[MODEL=]PATH",
                        help="weights file instead of the published weights: PATH for every model, MODEL=PATH for "
                             "one (repeatable), or `random` for a fixed random init (smoke runs)")
    common.add_argument("--batch-size", type=int, help="evaluation batch size (classification and the micro mm models; "
                                                       "paper mm models are evaluated one image at a time)")
    common.add_argument("--workers", type=int, help="data-loading worker processes (default: 4; micro: 0)")
    common.add_argument("--force", action="store_true",
                        help="recompute cells that are already stored (a failed recompute keeps the stored record)")
    common.add_argument("--results-dir", help="where records and CSVs go (default: $CLAMP_RESULTS, else results/ "
                                              "for suites and a personal cache folder for run and compare)")
    common.add_argument("--executor", default="none", choices=EXECUTORS,
                        help="none: run here; slurm: one submitit job per cell")
    common.add_argument("--partition", help="SLURM partition")
    common.add_argument("--gpus", type=int, default=1, help="GPUs per SLURM job")
    common.add_argument("--timeout-min", type=int, default=240, help="time limit of a SLURM job")
    option = dict(type=_keyvalue, action="append", default=[], metavar="KEY=VALUE")

    one = sub.add_parser("run", parents=[common], help="run one cell")
    one.add_argument("--task", default="classification", choices=TASKS, help="the task adapter (default: %(default)s)")
    one.add_argument("--model", required=True, help="a timm tag, an mm config name or .py path, or a micro model "
                                                    "(`clamp-bench list --models`)")
    one.add_argument("--method", required=True, help="a registered method (`clamp-bench list`)")
    one.add_argument("--w-bits", type=int, required=True, help="weight bits, 2..16 (32: leave in FP)")
    one.add_argument("--a-bits", type=int, required=True, help="activation bits, 2..16 (32: leave in FP)")
    one.add_argument("--mixed", action="store_true",
                     help="mixed precision within the model size and BOPS of uniform W/A bits")
    one.add_argument("--seed", type=int, default=0, help="seed of the method's randomness (default: %(default)s)")
    one.add_argument("--n-eval", type=int, help="evaluate on a fixed random subset of this size")
    one.add_argument("--option", **option, help="method option (JSON value), repeatable")
    one.add_argument("--quant-option", **option,
                     help="layout (reference, the default, or inputs), w_observer, a_observer; with layout=inputs "
                          "also symmetric, softmax_quant")
    one.add_argument("--task-option", **option, help="task option (JSON value), e.g. quant_neck=true for mm tasks")
    one.add_argument("--cfg-options", nargs="+", action=_dict_action(), default={}, metavar="KEY=VALUE",
                     help="mm tasks: dotted config keys to override, parsed as mmengine's tools parse them "
                          "(model.test_cfg.rcnn.score_thr=0.01); recorded in the cell's task options")

    one.add_argument("--export", action="store_true",
                     help="then export the cell to ONNX QDQ and check it on ONNX Runtime's integer kernels")

    suite = sub.add_parser("suite", parents=[common], help="run every cell of a suite")
    suite.add_argument("name", help=f"one of: {', '.join(suites.available_suites())}, or a .toml path")
    suite.add_argument("--stale", action="store_true",
                       help="also recompute the cells whose records older code (or a dirty tree) computed")
    suite.add_argument("--dry-run", action="store_true",
                       help="list the cells it would run and skip, with a time estimate, and run nothing")

    cmp = sub.add_parser("compare", parents=[common], help="run a method on a suite's cells, print its deltas")
    cmp.add_argument("--method", required=True, help="the method to compare (registered by name)")
    cmp.add_argument("--suite", required=True, help="the suite whose cells it runs and whose methods it is compared to")
    cmp.add_argument("--option", **option, help="option of the compared method, repeatable")

    board = sub.add_parser("leaderboard", help="rebuild results/<task>.csv, summaries, tables, plots, published report")
    board.add_argument("--results-dir", help="the results folder (default: $CLAMP_RESULTS, else results/)")
    prints = sub.add_parser("fingerprint", help="every code path of the stored rows: its behaviour fingerprint today, "
                                                "its rows, how many are stale")
    prints.add_argument("--results-dir", help="the results folder (default: $CLAMP_RESULTS, else results/)")
    prints.add_argument("--backfill", action="store_true",
                        help="first compute the fingerprints of old records' paths at their own commits (a git "
                             "worktree each)")
    out = sub.add_parser("export", help="export a stored cell to ONNX QDQ, run it on ONNX Runtime's integer kernels, "
                                        "store its accuracy, fusion and latency beside the cell")
    out.add_argument("key", help="the cell's key (config_key column of results/<task>.csv)")
    out.add_argument("--format", default="onnx", choices=["onnx"], help="the export format (default: %(default)s)")
    out.add_argument("--results-dir", help="where the cell is stored (default: the personal folder, then results/)")
    out.add_argument("--data-root", help="dataset folder (ImageNet cells)")
    out.add_argument("--n-images", type=int, help=f"evaluation images (default: {deploy.DeployOptions.n_images})")
    out.add_argument("--threads", type=int, help=f"ONNX Runtime threads (default: {deploy.DeployOptions.threads})")
    get = sub.add_parser("fetch", help="download the published weights of a suite's models into the libraries' "
                                       "caches (offline: list what is missing and where it comes from)")
    get.add_argument("name", help=f"one of: {', '.join(suites.available_suites())}, or a .toml path")
    get.add_argument("--checkpoint", action="append", default=[], metavar="[MODEL=]PATH",
                     help="models given a file need nothing fetched")
    listing = sub.add_parser("list", help="list tasks, methods and suites")
    listing.add_argument("--models", action="store_true", help="list every model each task knows instead")

    args = parser.parse_args(argv)
    # mmcv 2.1 imports pkg_resources, which setuptools < 81 (needed to build mmcv) deprecates loudly
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    init_distributed()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "run":
            task_options = dict(args.task_option)
            if args.cfg_options:
                task_options["cfg_options"] = dict(args.cfg_options)
            # without --n-eval the whole split, counted as the suites count it: the same cell as theirs
            n_eval = args.n_eval if args.n_eval is not None else task_class(args.task).eval_size(args.model)
            cells = [Cell(args.task, args.model, args.method, args.w_bits, args.a_bits, args.seed, args.mixed,
                          n_eval, dict(args.option), dict(args.quant_option), task_options)]
            if args.export:
                _check_deployable(cells)
            store = _store(args, personal=True)
            records = _run(cells, args, store)
            deployed = _deploy(records, store, _deploy_options(args), args.data_root) if args.export else True
            sys.exit(0 if deployed and all(r and r["status"] == "ok" for r in records) else 1)
        if args.command == "suite":
            suite = suites.load_suite(args.name)
            checkpoints = _checkpoints(args, suite)
            cells = with_weights(suites.expand(suite), checkpoints)
            store = _store(args, personal=False)
            plan = dry_run.plan(cells, store)
            only = {c.key for c in plan.stale} if args.stale else None
            if args.dry_run:
                print(plan.describe(args.stale))
                return
            if not (args.force or args.stale or plan.to_run or "deploy" in suite):
                print(plan.all_finished(args.name, store))
                return
            if "deploy" in suite:
                _check_deployable(cells)
            records = _run(cells, args, store, only, checkpoints)
            deployed = True
            if "deploy" in suite:
                deployed = _deploy(records, store, _deploy_options(args, suite), args.data_root)
                print(f"wrote {leaderboard.write_csv(store, suite['task'])}")  # with the checks' columns
            print(leaderboard.cells_table(store, cells))
            sys.exit(0 if deployed and all(r and r["status"] == "ok" for r in records) else 1)
        if args.command == "compare":
            compare(args)
        if args.command == "fingerprint":
            fingerprint(args)
        if args.command == "export":
            export(args)
        if args.command == "fetch":
            sys.exit(fetch(args))
        if args.command == "leaderboard":
            store = _store(args, personal=False)
            for task in TASKS:
                print(f"wrote {leaderboard.write_csv(store, task)}")
            print(f"wrote {published.write_report(store)}")
            if store.root.resolve() == REPO_RESULTS.resolve() and leaderboard.write_readme(store, TASKS):
                print(f"wrote the headline tables into {leaderboard.README}")
            print(f"wrote {site.build(store, TASKS)}")
            for bad in store.bad:
                print(f"skipped unreadable record {bad}", file=sys.stderr)
        if args.command == "list" and args.models:
            for task in TASKS:
                print(f"{task}: " + ", ".join(known_models(task)))
        elif args.command == "list":
            print("tasks:   " + ", ".join(TASKS))
            print("methods: " + ", ".join(available_methods()))
            print("suites:  " + ", ".join(suites.available_suites()))
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        sys.exit(f"clamp-bench: error: {err}")
