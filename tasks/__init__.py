"""Task adapters: a model family, its data and its metric, behind one small interface."""
from __future__ import annotations

from typing import Any

from clamp.task import Task


def make_task(name: str, model_id: str, **options: Any) -> Task:
    """Build the adapter for task ``name`` (imported lazily: the mm stacks are heavy)."""
    if name == "classification":
        from tasks.classification import ClassificationTask
        return ClassificationTask(model_id, **options)
    raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")


TASKS = ("classification",)
