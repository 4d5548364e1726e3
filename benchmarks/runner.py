"""Run cells: build the task, evaluate FP, quantize with the method, evaluate, store the row.

Finished cells are skipped; a failing cell is stored as failed and the others go on; a killed
run loses at most the cell in flight, because every record is written atomically.
"""
from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from benchmarks.cell import Cell
from benchmarks.provenance import device_name, versions
from benchmarks.store import ResultStore, atomic_write
from clamp.cache import cache_dir, config_key
from clamp.quant import compression_report
from clamp.registry import make_method
from tasks import make_task

log = logging.getLogger("clamp-bench")
CACHE = cache_dir("runs")


@dataclass
class RunOptions:
    """How and where cells run; none of it changes a result, so none of it is in a cell's key."""

    device: str | None = None  # default: cuda when available
    data_root: str | None = None
    checkpoint: str | None = None
    force: bool = False

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _fp_metrics(task, cell: Cell, options: RunOptions) -> dict[str, float]:
    """FP metrics of a (task, model, weights, eval set), cached: every cell of that model shares them."""
    key = config_key([cell.task, cell.model, cell.n_eval, options.checkpoint, options.data_root])
    path = CACHE / "fp" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    metrics = task.evaluate(task.build_model())
    atomic_write(path, json.dumps(metrics))
    return metrics


def run_cell(cell: Cell, options: RunOptions) -> dict[str, Any]:
    """Compute one cell and return its record (not stored)."""
    device = options.torch_device
    task = make_task(cell.task, cell.model, data_root=options.data_root, checkpoint=options.checkpoint,
                     device=device, n_eval=cell.n_eval)
    method = make_method(cell.method, **cell.method_options)
    model = task.build_model()
    fp = _fp_metrics(task, cell, options)
    torch.manual_seed(cell.seed)
    start = time.time()
    qmodel, report = method.quantize(task, model, cell.quant_config(task.quant_exclude), cell.seed)
    quant_s = time.time() - start
    quant = task.evaluate(qmodel)
    return {
        "status": "ok", "metric": task.metric, "fp": fp, "quant": quant,
        "compression": compression_report(qmodel), "report": report,
        "quant_s": round(quant_s, 2), "wall_s": round(time.time() - start, 2),
        "device": device_name(device), "versions": versions(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _cell_log(cell: Cell) -> logging.Handler:
    path = CACHE / "logs" / cell.task / f"{cell.key}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


def run_cells(cells: Iterable[Cell], options: RunOptions, store: ResultStore | None = None) -> list[dict[str, Any]]:
    """Run every cell not yet stored as finished; return the records of all of them."""
    store = store or ResultStore()
    cells = list(cells)
    records = []
    for i, cell in enumerate(cells, 1):
        name = f"[{i}/{len(cells)}] {cell.task} {cell.model} {cell.method} {cell.precision} seed={cell.seed}"
        if not options.force and store.done(cell):
            log.info("%s: done, skipped (%s)", name, cell.key)
            records.append(store.load(cell))
            continue
        handler = _cell_log(cell)
        log.addHandler(handler)
        log.info("%s: running (%s)", name, cell.key)
        try:
            record = run_cell(cell, options)
            log.info("%s: %s %.2f -> %.2f", name, record["metric"], record["fp"][record["metric"]],
                     record["quant"][record["metric"]])
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # a failing cell is recorded and the suite goes on
            log.error("%s: failed: %s", name, err)
            log.debug(traceback.format_exc())
            record = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()}
        finally:
            log.removeHandler(handler)
            handler.close()
        store.save(cell, record)
        records.append(store.load(cell))
    return records
