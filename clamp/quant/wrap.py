"""Wrap a FP model into its fake-quantized twin, calibrate it, and inspect its quantizers."""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from clamp.quant.attention import ADAPTERS
from clamp.quant.modules import QuantConv2d, QuantLinear, QuantMatMul
from clamp.quant.plan import BitPlan
from clamp.quant.quantizer import Log2Quantizer, Quantizer

SOFTMAX_QUANTIZERS = {"uniform": Quantizer, "log2": Log2Quantizer}


@dataclass
class QuantConfig:
    """Everything that defines the quantizer; identical for every method on the leaderboard."""

    plan: BitPlan = field(default_factory=BitPlan)
    w_observer: str = "minmax"
    a_observer: str = "minmax"
    symmetric: bool = False
    softmax_quant: str = "uniform"
    exclude: tuple[str, ...] = ()  # module-name prefixes left in FP (e.g. mm heads and necks)
    mixed: bool = False  # the plan is a budget: a method may choose per-tensor bits within its compression

    def to_dict(self) -> dict:
        return asdict(self)


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in exclude)


def _set_child(root: nn.Module, name: str, child: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, child)


def quantize_model(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Return a fake-quantized copy of ``model`` (the FP model is left untouched).

    Every Linear/Conv2d gets a per-channel weight quantizer and a per-tensor input quantizer;
    every supported attention module gets quantizers on both operands of its two matmuls.
    Quantizers are named after the FP module they belong to.
    """
    if config.softmax_quant not in SOFTMAX_QUANTIZERS:
        raise ValueError(f"unknown softmax quantizer {config.softmax_quant!r}: use uniform or log2")
    qmodel = copy.deepcopy(model)
    plan = config.plan

    def quantizer(name: str, observer: str, axis: int | None = None, cls: type[Quantizer] = Quantizer) -> Quantizer:
        return cls(name, plan.bits(name), observer, axis, config.symmetric)

    targets = [(n, m) for n, m in qmodel.named_modules() if n and not _excluded(n, config.exclude)]
    for name, mod in targets:
        if type(mod) in (nn.Linear, nn.Conv2d):
            cls = QuantLinear if isinstance(mod, nn.Linear) else QuantConv2d
            _set_child(qmodel, name, cls(mod, quantizer(f"{name}.weight", config.w_observer, 0),
                                         quantizer(f"{name}.input", config.a_observer)))
    for name, mod in targets:
        adapter = ADAPTERS.get(type(mod))
        if adapter is not None:
            qk = QuantMatMul(quantizer(f"{name}.qk.a", config.a_observer), quantizer(f"{name}.qk.b", config.a_observer))
            av = QuantMatMul(quantizer(f"{name}.av.a", config.a_observer, cls=SOFTMAX_QUANTIZERS[config.softmax_quant]),
                             quantizer(f"{name}.av.b", config.a_observer))
            _set_child(qmodel, name, adapter(mod, qk, av))
    if not any(True for _ in quantizers(qmodel)):
        raise ValueError("no Linear, Conv2d or attention module to quantize: check `exclude`")
    return qmodel


def quantizers(model: nn.Module) -> Iterable[Quantizer]:
    """Every quantizer in ``model``, in module order."""
    return (m for m in model.modules() if isinstance(m, Quantizer))


def is_weight(q: Quantizer) -> bool:
    return q.name.endswith(".weight")


def quant_layers(model: nn.Module) -> Iterable[QuantLinear | QuantConv2d]:
    return (m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d)))


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Observe activations on ``batches`` (fed to ``model``), observe the weights once, freeze all."""
    for q in quantizers(model):
        q.reset()
        q.state = "fp" if is_weight(q) else "calibrate"
    was_training = model.training
    model.eval()
    for x in batches:
        model(x)
    model.train(was_training)
    for layer in quant_layers(model):
        layer.w_quant.observer.observe(layer.weight.detach())
    for q in quantizers(model):
        q.freeze()
    return model

