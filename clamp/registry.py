"""The method registry: methods are found by name, in-process or through a Python entry point
(group ``clamp_vit_bench.methods``), so a method in another package needs no edit to the harness."""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol

from torch import nn

from clamp.quant import QuantConfig
from clamp.task import Task

ENTRY_POINT_GROUP = "clamp_vit_bench.methods"
_METHODS: dict[str, type[Method]] = {}


class Method(Protocol):
    """Turns a FP model into a quantized one for a task. Capabilities: ``label_free`` methods work
    on a bare backbone (detection, segmentation); ``mixed_precision`` methods search per-layer
    bit-widths (``MP-`` cells). Options are constructor keyword arguments."""

    name: str
    label_free: bool
    mixed_precision: bool

    def quantize(self, task: Task, model: nn.Module, config: QuantConfig,
                 seed: int) -> tuple[nn.Module, dict[str, Any]]:
        """Return the quantized model and a report (at least ``calibration`` and ``n_calib``)."""
        ...


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


def supports_mixed(name: str) -> bool:
    """Whether method ``name`` can run an ``MP-`` cell (a class without the attribute cannot)."""
    return bool(getattr(get_method(name), "mixed_precision", False))


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
