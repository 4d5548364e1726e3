"""Task adapters: a model family, its data and its metric, behind one small interface
(clamp/task.py). Tasks are plugins like methods and model families: each is one module named in
the entry point group ``clamp_vit_bench.tasks`` (pyproject.toml), imported when first used (the
mm stacks are heavy)."""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from clamp.task import Task

TASK_GROUP = "clamp_vit_bench.tasks"
TASKS = tuple(sorted(ep.name for ep in entry_points(group=TASK_GROUP)))


def task_class(name: str) -> type:
    found = [ep for ep in entry_points(group=TASK_GROUP) if ep.name == name]
    if not found:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)} or register one under the "
                         f"entry point group {TASK_GROUP}")
    try:
        return found[0].load()
    except ImportError as err:
        raise RuntimeError(f"the {name} task needs {err.name}: run `python tools/install_mm.py` and "
                           "`pip install -e .[mm]`") from err


def make_task(name: str, model_id: str, **options: Any) -> Task:
    """Build the adapter for task ``name``."""
    return task_class(name)(model_id, **options)
