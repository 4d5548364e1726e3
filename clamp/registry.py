"""The method registry: methods are found by name, in-process or through a Python entry point
(group ``clamp_vit_bench.methods``), so a method in another package needs no edit to the harness."""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar

from torch import nn

from clamp.quant import QuantConfig
from clamp.task import Task

ENTRY_POINT_GROUP = "clamp_vit_bench.methods"
_METHODS: dict[str, type[Method]] = {}


class Method:
    """Base of every method: turns a FP model into a quantized one for a task.

    It owns the skeleton all methods share: refuse a cell it cannot run (one line, before any
    work), take the task's backbone, let the method quantize and calibrate it
    (``quantize_backbone``), put it back. Capabilities are class attributes: ``label_free``
    methods need no class labels (detection, segmentation); ``mixed_precision`` methods search
    per-layer bit-widths (``MP-`` cells); ``tasks`` names the tasks it runs on (None: all).
    Options are constructor keyword arguments (a dataclass's fields)."""

    name: ClassVar[str] = ""
    label_free: ClassVar[bool] = True
    mixed_precision: ClassVar[bool] = False
    tasks: ClassVar[tuple[str, ...] | None] = None

    def quantize(self, task: Task, model: nn.Module, config: QuantConfig,
                 seed: int) -> tuple[nn.Module, dict[str, Any]]:
        """Return the quantized model and a report (at least ``calibration`` and ``n_calib``)."""
        why = refusal(type(self), task.name, bool(task.num_classes), config.mixed)
        if why:
            raise ValueError(why)
        qnet, report = self.quantize_backbone(task, task.backbone(model), config, seed)
        return task.replace_backbone(model, qnet), report

    def quantize_backbone(self, task: Task, net: nn.Module, config: QuantConfig,
                          seed: int) -> tuple[nn.Module, dict[str, Any]]:
        """The quantized and calibrated ``net`` and the report."""
        raise NotImplementedError


def refusal(method: type, task: str, labelled: bool, mixed: bool) -> str | None:
    """Why ``method`` (any method class: capabilities it does not declare are absent) cannot run a
    cell of ``task`` (``labelled``: the task has classes), or None."""
    name, tasks = getattr(method, "name", method.__name__), getattr(method, "tasks", None)
    if tasks is not None and task not in tasks:
        return f"{name} runs on {', '.join(tasks)} only, not {task}"
    if mixed and not searches_bits(method):
        return f"{name} has no mixed-precision search: run it at fixed precision"
    if not labelled and not getattr(method, "label_free", False):
        return (f"{name} needs class labels, which the {task} task has not: "
                "use a label-free method (clamp-vit, psaq-vit-v2, gaussian, real)")
    return None


def searches_bits(method: type) -> bool:
    """Whether a method class can run an ``MP-`` cell (one that does not declare it cannot)."""
    return bool(getattr(method, "mixed_precision", False))


def stage_options(method: object, stage: int) -> dict[str, Any]:
    """The options of a dataclass method that belong to ``stage`` (``field(metadata={"stage": 1})``):
    what a cache of that stage's output is keyed on, derived from the fields, never listed by hand."""
    return {f.name: getattr(method, f.name) for f in dataclasses.fields(method) if f.metadata.get("stage") == stage}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator registering a method in this process (tests, notebooks)."""
    def wrap(cls: type) -> type:
        cls.name = name
        _METHODS[name] = cls
        return cls
    return wrap


def available_methods() -> list[str]:
    return sorted(set(_METHODS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def get_method(name: str) -> type[Method]:
    if name not in _METHODS:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            raise ValueError(f"unknown method {name!r}: choose one of {', '.join(available_methods())} "
                             f"or register one under the entry point group {ENTRY_POINT_GROUP}")
        cls = found[0].load()
        cls.name = name
        _METHODS[name] = cls
    return _METHODS[name]


def make_method(name: str, **options: Any) -> Method:
    """Build method ``name``; unknown options and values of the wrong type are one-line errors."""
    cls = get_method(name)
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        for key, value in options.items():
            if key in hints and not _fits(value, hints[key]):
                raise ValueError(f"bad option {key}={value!r} for method {name!r}: expected {hints[key]}")
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"bad options for method {name!r}: {err}") from None


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON-decoded option value fits a field's annotation (int, float, bool, str,
    tuples and lists of them, unions with None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True
