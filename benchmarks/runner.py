"""Run cells: build the task, evaluate FP, quantize with the method, evaluate, store the row.

Finished cells are skipped; a failing cell is stored as failed and the others go on; a killed
run loses at most the cell in flight, because every record is written atomically.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from benchmarks.cell import Cell
from benchmarks.fingerprint import Fingerprints, path_name, path_of
from benchmarks.provenance import committed_code, device_name, versions
from benchmarks.store import ResultStore
from clamp.io import atomic_write_text, cache_dir, config_key, file_sha256
from clamp.quant import compression_report, quant_state
from clamp.registry import make_method
from clamp.task import RANDOM_WEIGHTS
from tasks import make_task

log = logging.getLogger("clamp-bench")
CACHE = cache_dir("runs")


def checkpoint_for(checkpoints: dict[str, str], model: str) -> str | None:
    """The weights a model runs on: its own entry, else the entry for every model ("*"), else None
    (its published weights)."""
    return checkpoints.get(model, checkpoints.get("*"))


def with_weights(cells: list[Cell], checkpoints: dict[str, str]) -> list[Cell]:
    """Cells computed on other weights than the published ones carry their fingerprint: other
    weights, another cell."""
    digests: dict[str, str] = {}
    out = []
    for cell in cells:
        path = checkpoint_for(checkpoints, cell.model)
        if path and path not in digests:
            if path == RANDOM_WEIGHTS:
                digests[path] = RANDOM_WEIGHTS
            elif not Path(path).is_file():
                raise FileNotFoundError(f"checkpoint {path} does not exist: pass an existing file")
            else:
                digests[path] = file_sha256(path)[:16]
        out.append(dataclasses.replace(cell, weights=digests[path]) if path else cell)
    return out


@dataclass
class RunOptions:
    """How and where cells run; none of it changes a result, so none of it is in a cell's key."""

    device: str | None = None  # default: cuda when available
    data_root: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)  # model (or "*": every model) -> file or "random"
    force: bool = False
    batch_size: int | None = None  # evaluation batch (default: the task's)
    workers: int | None = None  # data-loading processes (default: the task's)

    def checkpoint(self, model: str) -> str | None:
        return checkpoint_for(self.checkpoints, model)

    def task_kwargs(self, model: str) -> dict:
        """How a task adapter runs: device, data, weights, loader; never part of a result."""
        loader = {k: v for k, v in (("batch_size", self.batch_size), ("workers", self.workers)) if v is not None}
        return dict(device=self.torch_device, data_root=self.data_root, checkpoint=self.checkpoint(model), **loader)

    @property
    def torch_device(self) -> torch.device:
        if self.device:
            return torch.device(self.device)
        if torch.cuda.is_available():  # under torchrun each rank takes its own GPU
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")


def init_distributed() -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): evaluation is then
    sharded over the ranks and rank 0 stores the results."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def _fp_metrics(task, cell: Cell, options: RunOptions) -> dict[str, float]:
    """FP metrics of a (task, model, weights, eval set), cached per committed code: every cell of
    that model shares them, and a change to the evaluation (a metric added, a fix) recomputes them.
    Uncommitted code is evaluated afresh and never cached."""
    code = committed_code()
    key = config_key([cell.task, cell.model, cell.n_eval, task.weights_id, options.data_root, code,
                      *([cell.task_options] if cell.task_options else [])])
    path = CACHE / "fp" / f"{key}.json"
    if code and path.is_file():
        return json.loads(path.read_text())
    metrics = task.evaluate(task.build_model())
    if code:
        atomic_write_text(path, json.dumps(metrics))
    return metrics


HELD_OUT = 32  # real training images that score a search's children after the fact (alignment)
HELD_OUT_SEED = 104729  # their own seed stream: never the images the real-data oracle calibrates on


def held_out_loss(task, model: torch.nn.Module, seed: int):
    """The task's output loss of a quantized net against the FP one on ``HELD_OUT`` real training
    images (clamp/search/alignment.py): a diagnostic of the method's choices, never shown to the
    method's decisions and never the evaluation set."""
    net = task.backbone(model)
    images = task.real_images(HELD_OUT, seed=HELD_OUT_SEED + seed)
    with torch.no_grad():
        fp_out = net(images)

    def loss(qnet: torch.nn.Module) -> float:
        start = time.time()
        with torch.no_grad():
            value = float(task.output_loss(fp_out, qnet(images)))
        loss.seconds += time.time() - start
        return value
    loss.seconds = 0.0  # spent in the diagnostic: left out of the cell's wall time
    return loss


def run_cell(cell: Cell, options: RunOptions) -> dict[str, Any]:
    """Compute one cell and return its record (not stored; ``quant_state`` holds tensors, which the
    store writes to a safetensors file beside the record)."""
    device = options.torch_device
    task = make_task(cell.task, cell.model, n_eval=cell.n_eval, **options.task_kwargs(cell.model), **cell.task_options)
    method = make_method(cell.method, **cell.method_options)
    model = task.build_model()
    fp = _fp_metrics(task, cell, options)
    if hasattr(method, "held_out"):  # a search-based method: its fitness is scored on held-out images
        method.held_out = held_out_loss(task, model, cell.seed)
    torch.manual_seed(cell.seed)
    start = time.time()
    qmodel, report = method.quantize(task, model, cell.quant_config(task.quant_exclude), cell.seed)
    diagnostic_s = getattr(getattr(method, "held_out", None), "seconds", 0.0)
    quant_s = time.time() - start - diagnostic_s
    quant = task.evaluate(qmodel)
    return {
        "status": "ok", "metric": task.metric, "fp": fp, "quant": quant, "weights_id": task.weights_id,
        "code": committed_code(),
        "compression": compression_report(qmodel), "report": report, "quant_state": quant_state(qmodel),
        "quant_s": round(quant_s, 2), "wall_s": round(time.time() - start - diagnostic_s, 2),
        "diagnostic_s": round(diagnostic_s, 2),
        "device": device_name(device), "versions": versions(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _cell_log(cell: Cell) -> logging.Handler:
    path = CACHE / "logs" / cell.task / f"{cell.key}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


def execute_cell(cell: Cell, options: RunOptions, store_root: str) -> dict[str, Any] | None:
    """Compute and store one cell under its lock; a failure is stored beside the good record,
    never over it. A cell another process is computing is waited for, and one finished meanwhile
    is not redone (unless forced). Runs in this process or in a submitit job: the same code."""
    store = ResultStore(store_root)
    name = f"{cell.task} {cell.model} {cell.method} {cell.precision} seed={cell.seed}"
    if dist.is_initialized():  # every rank computes (evaluation is sharded), rank 0 stores
        return _compute_and_store(cell, options, store, name)
    with store.lock(cell.key):
        if store.done(cell) and not options.force:
            log.info("%s: finished by another process", name)
            return store.load(cell)
        return _compute_and_store(cell, options, store, name)


def behaviour(cell: Cell, store: ResultStore) -> str | None:
    """The fingerprint of the cell's path at this (committed) code: its canary, run once per code."""
    path = path_of(cell.config())
    return Fingerprints(store.root).today([path]).get(path_name(path))


def _compute_and_store(cell: Cell, options: RunOptions, store: ResultStore, name: str) -> dict[str, Any]:
    handler = _cell_log(cell)
    log.addHandler(handler)
    log.info("%s: running (%s)", name, cell.key)
    try:
        record = run_cell(cell, options)
        record["behaviour"] = behaviour(cell, store) if record["code"] else None
        log.info("%s: %s %.2f -> %.2f", name, record["metric"], record["fp"][record["metric"]],
                 record["quant"][record["metric"]])
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # a failing cell is recorded and the suite goes on
        log.error("%s: failed: %s", name, err)
        record = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    finally:
        log.removeHandler(handler)
        handler.close()
    stored = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        stored = store.read(store.save(cell, record), cell.key)
    if dist.is_initialized():
        dist.barrier()
    plain = {k: v for k, v in record.items() if k != "quant_state"}  # tensors stay out of returned records
    return stored or {"key": cell.key, "config": cell.config(), **plain}


def run_cells(cells: Iterable[Cell], options: RunOptions, store: ResultStore | None = None,
              executor: Any = None, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Run every cell not yet stored as finished (or in ``only``, keys to recompute), here or
    through a submitit ``executor``; return the latest record of each cell, in order: the new
    one when it ran (a failed attempt included), else the stored one."""
    store = store or ResultStore()
    cells = list(cells)
    def redo(c: Cell) -> bool:
        return options.force or (only is not None and c.key in only)
    todo = list({c.key: c for c in cells if redo(c) or not store.done(c)}.values())
    log.info("%d cells, %d finished, %d to run", len(cells), len(cells) - len(todo), len(todo))
    # a cell to recompute is forced; any other is skipped if another process finished it meanwhile
    per_cell = [dataclasses.replace(options, force=redo(c)) for c in todo]
    latest: dict[str, dict[str, Any] | None] = {}
    if executor is None:
        for cell, opts in tqdm(list(zip(todo, per_cell, strict=True)), desc="cells", unit="cell", disable=None):
            latest[cell.key] = execute_cell(cell, opts, str(store.root))
    elif todo:
        jobs = executor.map_array(execute_cell, todo, per_cell, [str(store.root)] * len(todo))
        for cell, job in zip(todo, jobs, strict=True):
            latest[cell.key] = job.result()
    return [latest.get(c.key) or store.load(c) for c in cells]
