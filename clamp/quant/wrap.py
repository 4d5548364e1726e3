"""Wrap a FP model into its fake-quantized twin, calibrate it, and inspect its quantizers."""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from clamp.quant.attention import ADAPTERS as ATTENTION_ADAPTERS
from clamp.quant.attention import QuantAttentionBase
from clamp.quant.families import load_families
from clamp.quant.modules import QuantConv2d, QuantLinear, QuantMatMul
from clamp.quant.observers import OBSERVERS
from clamp.quant.plan import BitPlan
from clamp.quant.quantizer import FP_BITS, Log2Quantizer, PtfQuantizer, Quantizer
from clamp.quant.reference import BLOCK_SITES, LAYERNORM_INPUTS, MODEL_SITES, quantize_output

SOFTMAX_QUANTIZERS = {"uniform": Quantizer, "log2": Log2Quantizer}
LAYOUTS = ("reference", "inputs")


@dataclass
class QuantConfig:
    """Everything that defines the quantizer; identical for every method on the leaderboard.

    ``layout`` says where the quantizers sit (section 4 of the design): ``reference``, the
    layout of the published tables (layer outputs, symmetric full-range weights, see
    clamp/quant/reference.py and each family's module), or ``inputs`` (the inputs of every
    Linear/Conv2d and both operands of the attention matmuls; ``symmetric`` and ``softmax_quant`` apply to it only).
    """

    plan: BitPlan = field(default_factory=BitPlan)
    w_observer: str = "minmax"
    a_observer: str = "minmax"
    symmetric: bool = False
    softmax_quant: str = "uniform"
    exclude: tuple[str, ...] = ()  # module-name prefixes left in FP (e.g. mm heads and necks)
    mixed: bool = False  # the plan is a budget: a method may choose per-tensor bits within its compression
    layout: str = "reference"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}: use {' or '.join(LAYOUTS)}")
        if self.softmax_quant not in SOFTMAX_QUANTIZERS:
            raise ValueError(f"unknown softmax quantizer {self.softmax_quant!r}: use uniform or log2")
        for kind, observer, allowed in (("w_observer", self.w_observer, OBSERVERS),
                                        ("a_observer", self.a_observer, [*OBSERVERS, "ptf"])):
            if observer not in allowed:
                raise ValueError(f"unknown {kind} {observer!r}: choose one of {', '.join(allowed)}")
        if self.a_observer == "ptf" and self.layout != "reference":
            raise ValueError("a_observer=ptf quantizes LayerNorm inputs, which are sites of the reference layout only: "
                             "use layout=reference")
        if self.layout == "reference" and (self.symmetric or self.softmax_quant != "uniform"):
            raise ValueError("symmetric and softmax_quant belong to layout=inputs: the reference layout has "
                             "symmetric weights and an FP softmax")

    def to_dict(self) -> dict:
        return asdict(self)


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in exclude)


def _set_child(root: nn.Module, name: str, child: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, child)


def quantize_model(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Return a fake-quantized copy of ``model`` (the FP model is left untouched).

    Every Linear/Conv2d gets a per-output-channel weight quantizer and every supported
    attention module an adapter exposing its two matmuls; activation quantizers then follow
    ``config.layout``. Quantizers are named after the FP module they belong to.
    """
    load_families()
    qmodel = copy.deepcopy(model)
    plan, reference = config.plan, config.layout == "reference"

    def quantizer(name: str, observer: str, axis: int | None = None, cls: type[Quantizer] = Quantizer) -> Quantizer:
        if reference:  # symmetric full-range weights, asymmetric activations
            return cls(name, plan.bits(name), observer, axis, symmetric=axis is not None, full_range=True)
        return cls(name, plan.bits(name), observer, axis, config.symmetric)

    def act(name: str) -> Quantizer:
        if config.a_observer == "ptf":
            return PtfQuantizer(name, plan.bits(name)) if name.rsplit(".", 1)[-1] in LAYERNORM_INPUTS \
                else quantizer(name, "minmax")
        return quantizer(name, config.a_observer)

    targets = [(n, m) for n, m in qmodel.named_modules() if n and not _excluded(n, config.exclude)]
    for name, mod in targets:
        if type(mod) in (nn.Linear, nn.Conv2d):
            cls = QuantLinear if isinstance(mod, nn.Linear) else QuantConv2d
            a_quant = None if reference else act(f"{name}.input")
            _set_child(qmodel, name, cls(mod, quantizer(f"{name}.weight", config.w_observer, 0), a_quant))
    for name, mod in targets:
        adapter = ATTENTION_ADAPTERS.get(type(mod))
        if adapter is None:
            continue
        if reference:
            qk, av = QuantMatMul(), QuantMatMul()
        else:
            qk = QuantMatMul(act(f"{name}.qk.a"), act(f"{name}.qk.b"))
            av = QuantMatMul(quantizer(f"{name}.av.a", config.a_observer, cls=SOFTMAX_QUANTIZERS[config.softmax_quant]),
                             act(f"{name}.av.b"))
        _set_child(qmodel, name, adapter(mod, qk, av))
    if reference:
        _place_reference_sites(qmodel, config.exclude, act)
    if not any(True for _ in quantizers(qmodel)):
        raise ValueError("no Linear, Conv2d or attention module to quantize: check `exclude`")
    return qmodel


def _place_reference_sites(qmodel: nn.Module, exclude: tuple[str, ...], act) -> None:
    """Attach the reference layout's activation quantizers. The root is one registered model, or
    a Sequential of models (an mm backbone and its neck): registered parts get their family's
    sites; any other part gets a quantizer on the output of each of its quantized layers. A site
    under an excluded prefix stays in FP (32 bits)."""
    def make(name: str) -> Quantizer:
        return Quantizer(name, FP_BITS) if _excluded(name, exclude) else act(name)

    parts = list(qmodel.named_children()) if isinstance(qmodel, nn.Sequential) else [("", qmodel)]
    for prefix, part in parts:
        if _excluded(prefix, exclude):
            continue
        family = MODEL_SITES.get(type(part))
        if family is None and isinstance(qmodel, nn.Sequential) and not _has_blocks(part):
            for name, layer in part.named_modules(prefix=prefix):
                if isinstance(layer, (QuantLinear, QuantConv2d)) and not _excluded(name, exclude):
                    quantize_output(layer, make(f"{name}.out"))
            continue
        if family is None:
            raise ValueError(f"the reference layout has no adapter for {type(part).__name__}: register its family "
                             "(README: adding a model family), or run it with --quant-option layout=inputs")
        for name, mod in list(part.named_modules(prefix=prefix)):
            sites = BLOCK_SITES.get(type(mod))
            if sites is not None and not _excluded(name, exclude):
                sites(mod, name, make)
        family(part, prefix, make)
        missing = [n for n, m in part.named_modules(prefix=prefix)
                   if isinstance(m, QuantAttentionBase) and not isinstance(m.matmul_qk.out_quant, Quantizer)]
        if missing:
            raise ValueError(f"the reference layout has no block adapter for the attention at {missing[0]}: "
                             "register its block in its family's module (tasks/families/)")


def _has_blocks(module: nn.Module) -> bool:
    return any(isinstance(m, QuantAttentionBase) for m in module.modules())


def quantizers(model: nn.Module) -> Iterable[Quantizer]:
    """Every quantizer in ``model``, in module order."""
    return (m for m in model.modules() if isinstance(m, Quantizer))


def is_weight(q: Quantizer) -> bool:
    return q.name.endswith(".weight")


def quant_layers(model: nn.Module) -> Iterable[QuantLinear | QuantConv2d]:
    return (m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d)))


@torch.no_grad()
def probe_costs(model: nn.Module, x: torch.Tensor) -> None:
    """One forward of one image with every quantizer passing through: record, per quantized
    layer, its MACs per image and the activation quantizer that produced its input (``feeder``,
    for BOPS), per activation matmul its MACs per image, and per quantizer the elements it
    quantizes per image (``numel``). A quantizer that passes through returns its input object, so
    the feeder is found by identity, or else (the input was reshaped on the way, e.g. into Swin
    windows) it is the last quantizer that ran."""
    produced: dict[int, tuple[torch.Tensor, Quantizer]] = {}  # the tensor is kept so its id stays unique
    last: list[Quantizer] = []

    def on_quantizer(q: Quantizer, _args: tuple, out: torch.Tensor) -> None:
        q.numel = out.numel()
        produced[id(out)] = (out, q)
        last[:] = [q]

    def on_matmul(matmul: QuantMatMul, args: tuple, out: torch.Tensor) -> None:
        matmul.macs = out.numel() * args[0].shape[-1]

    def on_layer_input(layer: QuantLinear | QuantConv2d, args: tuple) -> None:
        # before the layer runs: its own output quantizer must not count as the last one that ran
        feeder = layer.a_quant
        if feeder is None:
            feeder = produced[id(args[0])][1] if id(args[0]) in produced else (last or [None])[0]
        layer.feeder = feeder.name if feeder is not None else None

    def on_layer(layer: QuantLinear | QuantConv2d, args: tuple, out: torch.Tensor) -> None:
        fan_in = layer.in_features if isinstance(layer, QuantLinear) else \
            layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        layer.macs = out.numel() * fan_in

    states = {q: q.state for q in quantizers(model)}
    handles = [q.register_forward_hook(on_quantizer) for q in states if not is_weight(q)]
    handles += [layer.register_forward_pre_hook(on_layer_input) for layer in quant_layers(model)]
    handles += [layer.register_forward_hook(on_layer) for layer in quant_layers(model)]
    handles += [m.register_forward_hook(on_matmul) for m in model.modules() if isinstance(m, QuantMatMul)]
    try:
        for q in states:
            q.state = "fp"
        model(x[:1])
    finally:
        for h in handles:
            h.remove()
        for q, state in states.items():
            q.state = state


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Observe activations on ``batches`` (fed to ``model``; running min/max over all of them),
    observe the weights once, freeze all. The first image also probes the layer costs."""
    batches = iter(batches)
    first = next(batches)
    was_training = model.training
    model.eval()
    for q in quantizers(model):
        q.reset()
    probe_costs(model, first)
    for q in quantizers(model):
        q.state = "fp" if is_weight(q) else "calibrate"
    for x in itertools.chain([first], batches):
        model(x)
    model.train(was_training)
    for layer in quant_layers(model):
        layer.w_quant.observer.observe(layer.weight.detach())
    for q in quantizers(model):
        q.freeze()
    return model


@torch.no_grad()
def recalibrate_activations(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Observe the activation quantizers again on ``batches``, as ``calibrate`` does (weights in FP
    while observing), and keep everything a search set: weight scales, bits, scale multipliers."""
    acts = [q for q in quantizers(model) if not is_weight(q)]
    weights = [q for q in quantizers(model) if is_weight(q)]
    mults = [q.mult for q in acts]
    was_training = model.training
    model.eval()
    for q in acts:
        q.reset()
        q.state = "calibrate"
    for q in weights:
        q.state = "fp"
    for x in batches:
        model(x)
    for q in weights:
        q.state = "quant"
    for q, mult in zip(acts, mults, strict=True):
        q.freeze()
        q.set_mult(mult)
    model.train(was_training)
    return model
