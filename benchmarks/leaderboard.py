"""Collect stored cells into one CSV per task (one row per cell) with pandas."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.store import ResultStore, atomic_write

COLUMNS = ["task", "model", "method", "precision", "w_bits", "a_bits", "mean_w_bits", "mean_a_bits",
           "compression_ratio", "size_mb", "metric", "fp_value", "quant_value", "delta", "seed", "calibration",
           "n_calib", "n_eval", "wall_s", "device", "versions", "timestamp", "config_key", "config"]
SORT = ["model", "method", "precision", "seed", "config_key"]


def row(record: dict) -> dict:
    """One CSV row from a stored cell record (metrics in percent)."""
    cfg, metric, comp = record["config"], record["metric"], record["compression"]
    fp, quant = record["fp"][metric], record["quant"][metric]
    precision = f"{'MP-' if cfg['mixed'] else ''}W{cfg['w_bits']}A{cfg['a_bits']}"
    return {
        "task": cfg["task"], "model": cfg["model"], "method": cfg["method"], "precision": precision,
        "w_bits": cfg["w_bits"], "a_bits": cfg["a_bits"], "mean_w_bits": round(comp["mean_w_bits"], 3),
        "mean_a_bits": round(comp["mean_a_bits"], 3), "compression_ratio": round(comp["compression_ratio"], 3),
        "size_mb": round(comp["size_mb"], 4), "metric": metric, "fp_value": round(fp, 3),
        "quant_value": round(quant, 3), "delta": round(quant - fp, 3), "seed": cfg["seed"],
        "calibration": record["report"]["calibration"], "n_calib": record["report"]["n_calib"],
        "n_eval": record["quant"]["n_eval"], "wall_s": record["wall_s"], "device": record["device"],
        "versions": record["versions"], "timestamp": record["timestamp"], "config_key": record["key"],
        "config": _config_text(cfg),
    }


def _config_text(cfg: dict) -> str:
    """Method and quantizer options (the rest has columns of its own), compact and stable."""
    parts = [f"{k}={v}" for k, v in sorted(cfg["method_options"].items())]
    parts += [f"quant.{k}={v}" for k, v in sorted(cfg["quant_options"].items())]
    return ";".join(parts)


def table(store: ResultStore, task: str) -> pd.DataFrame:
    rows = [row(r) for r in store.records(task) if r["status"] == "ok"]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(SORT, kind="stable").reset_index(drop=True)


def write_csv(store: ResultStore, task: str) -> Path:
    """Rebuild results/<task>.csv from the stored cells; the same cells give the same bytes."""
    path = store.root / f"{task}.csv"
    atomic_write(path, table(store, task).to_csv(index=False))
    return path
