"""Fake quantizers: uniform affine (per tensor or per channel) and log2 for post-softmax values.

Every method in the suite uses these, so leaderboard differences come from calibration data and
parameter search, never from quantizer tricks.
"""
from __future__ import annotations

import torch
from torch import nn

from clamp.quant.observers import ChannelSampleObserver, Observer, make_observer

FP_BITS = 32


def check_bits(bits: int) -> int:
    """Accept 2..16 bits, or 32 meaning 'leave in floating point'."""
    if bits != FP_BITS and not 2 <= bits <= 16:
        raise ValueError(f"bit-width {bits} is not supported: use 2..16, or 32 to leave a tensor in FP")
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid [qmin, qmax]: unsigned for affine, signed for symmetric."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """x_hat = (clamp(round(x / s) + z, qmin, qmax) - z) * s, broadcasting s and z against x.

    Differentiable in x (straight-through rounding) and in s, so scales can be learned. Clamping
    before rounding gives the same values (z and the bounds are integers) and keeps the gradient
    of values that round onto a bound.
    """
    q = round_ste(torch.clamp(x / scale + zero_point, qmin, qmax))
    return (q - zero_point) * scale


def range_to_affine(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool,
                    full_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map the real range [lo, hi] (widened to contain 0) onto the grid.

    Symmetric: s = max|x| / qmax, or with ``full_range`` s = max|x| / ((qmax - qmin) / 2) =
    max|x| / ((2^b - 1) / 2), the weight scale of the published quantizers (PSAQ-ViT
    ``models/quantization_utils/quant_utils.py``, ``symmetric_linear_quantization_params``):
    [-max, max] spans all 2^b - 1 steps and the largest magnitude clamps to the grid's edge.
    """
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / ((qmax - qmin) / 2 if full_range else qmax)
        return scale.clamp_min(1e-8), torch.zeros_like(scale)
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(1e-8)
    zero_point = torch.clamp(torch.round(-lo / scale) + qmin, qmin, qmax)
    return scale, zero_point


class Quantizer(nn.Module):
    """One quantized tensor: observes it while calibrating, fake-quantizes it once frozen.

    Lifecycle: ``fp`` (pass through) -> ``calibrate`` (observe, pass through) -> ``quant``.
    ``bits == 32`` keeps the tensor in FP whatever the state. ``mult`` scales the frozen scale;
    it is what the evolutionary search mutates. ``numel`` (elements per image) is set by the
    calibration probe, for activation-weighted mean bits.
    """

    def __init__(self, name: str, bits: int, observer: str = "minmax", axis: int | None = None,
                 symmetric: bool = False, full_range: bool = False) -> None:
        super().__init__()
        self.name, self.axis, self.symmetric, self.full_range = name, axis, symmetric, full_range
        self.numel: int | None = None
        self.bits = check_bits(bits)
        self.observer_name = observer
        self.observer: Observer = self._make_observer()
        self.state = "fp"
        self.mult = 1.0
        self.version = 0  # bumped whenever the effective quantization changes; lets callers cache
        self._fast: tuple | None = None  # (version, scale, qmin - z, qmax - z) as Python scalars
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))

    @property
    def learning(self) -> bool:
        """True while ``mult`` is a tensor being optimised by gradient (PSAQ-ViT V2's student)."""
        return isinstance(self.mult, torch.Tensor) and self.mult.requires_grad

    @property
    def active(self) -> bool:
        return self.state == "quant" and self.bits != FP_BITS

    def reset(self) -> None:
        """Forget observed statistics and the search multiplier (before a new calibration)."""
        self.observer = self._make_observer()
        self.mult = 1.0
        self.state = "fp"
        self.version += 1

    def _make_observer(self) -> Observer:
        return make_observer(self.observer_name, self.axis)

    def freeze(self) -> None:
        """Turn observed statistics into a scale and zero point and start quantizing."""
        if self.bits != FP_BITS:
            if not self.observer.seen:
                raise RuntimeError(f"quantizer {self.name} saw no data during calibration")
            scale, zero_point = self._params_from_observer()
            self.scale, self.zero_point = scale, zero_point
        self.state = "quant"
        self.version += 1

    def set_bits(self, bits: int) -> None:
        self.bits = check_bits(bits)
        if self.state == "quant":
            self.freeze()

    def set_scale(self, scale: torch.Tensor) -> None:
        """Replace the frozen scale (the evolutionary search's genes for weights)."""
        self.scale = scale
        self.version += 1

    def scale_at(self, bits: int) -> torch.Tensor:
        """The scale calibration would give at ``bits`` (for a redrawn mixed-precision bit gene)."""
        own, self.bits = self.bits, check_bits(bits)
        try:
            return self._params_from_observer()[0]
        finally:
            self.bits = own

    def set_mult(self, mult: float | torch.Tensor) -> None:
        """Multiplier of the frozen scale: a float, or a tensor that requires grad to learn it."""
        self.mult = mult if isinstance(mult, torch.Tensor) and mult.requires_grad else float(mult)
        self.version += 1

    def _params_from_observer(self) -> tuple[torch.Tensor, torch.Tensor]:
        def quantize(lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return self._quant_with(x, *range_to_affine(lo, hi, self.bits, self.symmetric, self.full_range))

        lo, hi = self.observer.range(quantize)
        return range_to_affine(lo, hi, self.bits, self.symmetric, self.full_range)

    def _quant_with(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        qmin, qmax = qrange(self.bits, self.symmetric)
        return fake_quant(x, _expand(scale, x, self.axis), _expand(zero_point, x, self.axis), qmin, qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state == "calibrate":
            self.observer.observe(x.detach())
            return x
        return self._quantize(x) if self.active else x

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None and not self.learning and not (x.requires_grad and torch.is_grad_enabled()):
            # inference fast path, same values: clamp(round(x/s) + z, qmin, qmax) - z equals
            # clamp(round(x/s), qmin - z, qmax - z) for an integer z; in place on a fresh tensor
            # it is several times faster than torch's fused fake-quant kernel on CPU
            if self._fast is None or self._fast[0] != self.version:
                qmin, qmax = qrange(self.bits, self.symmetric)
                z = int(self.zero_point)
                self._fast = (self.version, float(self.scale * self.mult), qmin - z, qmax - z)
            _, scale, lo, hi = self._fast
            return torch.div(x, scale).round_().clamp_(lo, hi).mul_(scale)
        return self._quant_with(x, self.scale * self.mult, self.zero_point)

    def extra_repr(self) -> str:
        kind = "per-channel" if self.axis is not None else "per-tensor"
        sym = "full-range" if self.full_range else self.symmetric
        return f"{self.name}, bits={self.bits}, {kind}, symmetric={sym}, state={self.state}"


class Log2Quantizer(Quantizer):
    """Log2 quantizer for post-softmax values in [0, hi]: x_hat = hi * 2^-q, q in [0, 2^b - 1].

    Values smaller than the last level round to 0, so the grid spends its levels near 0 where
    attention probabilities cluster.
    """

    def _params_from_observer(self) -> tuple[torch.Tensor, torch.Tensor]:
        hi = self.observer.hi.reshape(())  # the log grid is anchored at the observed maximum
        return hi.clamp_min(1e-8), torch.zeros_like(hi)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        hi = self.scale * self.mult
        levels = 2**self.bits - 1
        q = torch.round(-torch.log2((x / hi).clamp_min(1e-30)))
        x_hat = torch.where(q > levels, torch.zeros_like(x), hi * torch.pow(2.0, -q.clamp(0, levels)))
        return x + (x_hat - x).detach()


def _expand(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape a per-channel vector so it broadcasts along ``axis`` of ``x``."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


class PtfQuantizer(Quantizer):
    """FQ-ViT's power-of-two factor for LayerNorm inputs, whose channels span 25-70x the median
    range (FQ-ViT, megvii-research/FQ-ViT ``models/ptq/observer/ptf.py``, ``PtfObserver``; CLAMP-ViT
    ships the same file): one affine grid from the whole tensor's range, scale s and zero point z,
    and per channel c of the last axis the scale s / 2^(3 - k_c), k_c in 0..3, the one with the least
    squared error on the channel's observed values (ties: the finer scale). The zero point is
    shared, so the factors are shifts of one integer grid: LayerNorm's integer form (FQ-ViT's
    ``QIntLayerNorm``) aligns channels with bit shifts. Ours: the range is widened to contain 0 as
    for every affine quantizer, and the error is measured on a bounded sample of every calibration
    batch (FQ-ViT: the last batch)."""

    FACTORS = 4  # 2^0 .. 2^3

    def __init__(self, name: str, bits: int) -> None:
        super().__init__(name, bits, observer="ptf", axis=-1, symmetric=False)

    def _make_observer(self) -> Observer:
        return ChannelSampleObserver()

    def _params_from_observer(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.observer.range(None)
        coarse, zero_point = range_to_affine(lo, hi, self.bits, symmetric=False)
        qmin, qmax = qrange(self.bits, symmetric=False)
        v = self.observer.values().to(coarse.device)  # (channels, samples)
        errors = []
        for k in range(self.FACTORS):
            s = coarse / 2 ** (self.FACTORS - 1 - k)
            x_hat = (torch.clamp(torch.round(v / s) + zero_point, qmin, qmax) - zero_point) * s
            errors.append((x_hat - v).pow(2).mean(dim=1))
        best = torch.stack(errors).argmin(dim=0)  # the first of equal errors: the finer scale
        return coarse / 2.0 ** (self.FACTORS - 1 - best), zero_point
