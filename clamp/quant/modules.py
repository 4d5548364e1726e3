"""Quantized layers: Linear and Conv2d (per-channel weights, optionally a per-tensor input) and
the matmul of two activations (both operands, or its output, per tensor). They keep the FP
module's parameters."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clamp.quant.quantizer import Quantizer


def _maybe(quant: Quantizer | None, x: torch.Tensor) -> torch.Tensor:
    return x if quant is None else quant(x)


class QuantLinear(nn.Linear):
    """nn.Linear whose weight (and input, in the ``inputs`` layout) pass through fake quantizers.

    ``macs`` (per image) and ``feeder`` (the name of the activation quantizer that produced the
    input) are set by the calibration probe, for BOPS."""

    def __init__(self, fp: nn.Linear, w_quant: Quantizer, a_quant: Quantizer | None = None) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = fp.in_features, fp.out_features
        self.weight, self.bias = fp.weight, fp.bias
        self.w_quant, self.a_quant = w_quant, a_quant
        self.macs: int | None = None
        self.feeder: str | None = None
        self._cache: tuple[int, torch.Tensor] | None = None

    def quant_weight(self) -> torch.Tensor:
        """Fake-quantized weight, cached while the quantizer is unchanged (weights are frozen in PTQ)."""
        q = self.w_quant
        if not q.active:
            return self.weight
        if q.learning:
            return q(self.weight)
        if self._cache is None or self._cache[0] != q.version:
            with torch.no_grad():
                self._cache = (q.version, q(self.weight))
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_maybe(self.a_quant, x), self.quant_weight(), self.bias)


class QuantConv2d(nn.Conv2d):
    """nn.Conv2d whose weight (per output channel) and input pass through fake quantizers."""

    def __init__(self, fp: nn.Conv2d, w_quant: Quantizer, a_quant: Quantizer | None = None) -> None:
        nn.Module.__init__(self)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                     "groups", "padding_mode", "transposed", "output_padding", "_reversed_padding_repeated_twice"):
            setattr(self, attr, getattr(fp, attr))
        self.weight, self.bias = fp.weight, fp.bias
        self.w_quant, self.a_quant = w_quant, a_quant
        self.macs: int | None = None
        self.feeder: str | None = None
        self._cache = None

    quant_weight = QuantLinear.quant_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(_maybe(self.a_quant, x), self.quant_weight(), self.bias)


class QuantMatMul(nn.Module):
    """a @ b of two activations (the q·kᵀ and attn·v products of attention) with fake quantizers
    on both operands (``inputs`` layout) or on the product (``reference`` layout); either may be
    None."""

    def __init__(self, a_quant: Quantizer | None = None, b_quant: Quantizer | None = None,
                 out_quant: Quantizer | None = None) -> None:
        super().__init__()
        self.a_quant, self.b_quant, self.out_quant = a_quant, b_quant, out_quant
        # for BOPS: MACs per image (set by the calibration probe) and the activation quantizers whose
        # grids the operands are on (None: an FP operand); a layout without operand quantizers sets them
        self.macs: int | None = None
        self.feeders = tuple(q.name if q is not None else None for q in (a_quant, b_quant))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _maybe(self.out_quant, _maybe(self.a_quant, a) @ _maybe(self.b_quant, b))
