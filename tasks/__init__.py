"""Task adapters: a model family, its data and its metric, behind one small interface."""
from __future__ import annotations

import importlib
from typing import Any

from clamp.task import Task

# task name -> (module, class); imported lazily: the mm stacks are heavy
ADAPTERS = {"classification": ("tasks.classification", "ClassificationTask"),
            "detection": ("tasks.detection", "DetectionTask"),
            "segmentation": ("tasks.segmentation", "SegmentationTask")}
TASKS = tuple(ADAPTERS)


def task_class(name: str) -> type:
    if name not in ADAPTERS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    module, cls = ADAPTERS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise RuntimeError(f"the {name} task needs {err.name}: run `python tools/install_mm.py` and "
                           "`pip install -e .[mm]`") from err


def make_task(name: str, model_id: str, **options: Any) -> Task:
    """Build the adapter for task ``name``."""
    return task_class(name)(model_id, **options)
