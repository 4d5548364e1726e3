"""Suites: small TOML files under benchmarks/suites/ that expand into cells.

A suite has a ``task`` and one or more ``[[group]]`` tables; each group is the product of its
``models`` x ``methods`` x ``precisions`` x ``seeds`` with optional ``method_options``
(per method name), ``quant_options``, ``task_options`` and ``n_eval``. Top-level keys are defaults for groups;
a top-level ``checkpoints`` table names a weights file per model (paths relative to the suite file).
"""
from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Any

from benchmarks.cell import Cell, parse_precision
from clamp.registry import get_method, searches_bits
from clamp.task import RANDOM_WEIGHTS

SUITES = Path(__file__).parent / "suites"
GROUP_KEYS = {"models", "methods", "precisions", "seeds", "method_options", "quant_options", "task_options",
              "n_eval"}


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES.glob("*.toml"))


def load_suite(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.is_file():
        path = SUITES / f"{name_or_path}.toml"
    if not path.is_file():
        raise ValueError(f"unknown suite {name_or_path!r}: "
                         f"choose one of {', '.join(available_suites())} or a .toml path")
    with path.open("rb") as f:
        suite = tomllib.load(f)
    suite["checkpoints"] = {model: (file if file == RANDOM_WEIGHTS
                                   else str((path.parent / Path(file).expanduser()).resolve()))
                            for model, file in suite.get("checkpoints", {}).items()}
    return suite


LIST_KEYS = ("models", "methods", "precisions", "seeds")


def expand(suite: dict[str, Any]) -> list[Cell]:
    """All cells of a suite, in file order, without duplicates; a malformed suite is one line. An
    ``MP-`` precision expands only for the methods that search bit-widths."""
    if "task" not in suite:
        raise ValueError('the suite has no `task`: add task = "classification", "detection" or "segmentation"')
    defaults = {k: v for k, v in suite.items() if k in GROUP_KEYS}
    groups = suite.get("group") or [{}]
    cells: dict[str, Cell] = {}
    for group in groups:
        unknown = set(group) - GROUP_KEYS
        if unknown:
            raise ValueError(f"unknown suite keys {sorted(unknown)}: use {', '.join(sorted(GROUP_KEYS))}")
        g = {**defaults, **group}
        for key in LIST_KEYS:
            if key not in g and key != "seeds":
                raise ValueError(f"a suite group has no `{key}`: give a list, e.g. {key} = [...]")
            if not isinstance(g.get(key, []), list):
                raise ValueError(f"suite key `{key}` must be a list, e.g. {key} = [{g[key]!r}], not {g[key]!r}")
        for model, method, precision, seed in itertools.product(
                g["models"], g["methods"], g["precisions"], g.get("seeds", [0])):
            w_bits, a_bits, mixed = parse_precision(precision)
            if mixed and not searches_bits(get_method(method)):  # a suite never expands a cell it would refuse
                continue
            cell = Cell(task=suite["task"], model=model, method=method, w_bits=w_bits, a_bits=a_bits, seed=seed,
                        mixed=mixed, n_eval=g.get("n_eval"),
                        method_options=g.get("method_options", {}).get(method, {}),
                        quant_options=g.get("quant_options", {}), task_options=g.get("task_options", {}))
            cells.setdefault(cell.key, cell)
    return list(cells.values())
