"""Mixed-precision budget: the model size and BOPS of any bit assignment, computed exactly as
clamp.quant.compression_report does, without touching the model."""
from __future__ import annotations

from torch import nn

from clamp.quant import FP_BITS, quantizers
from clamp.quant.wrap import quant_layers


class BitBudget:
    """Size (bits) and BOPS of a bit assignment of ``model``'s quantizers. A plan is admissible
    when neither exceeds that of the plan the model was built with (uniform ``MP-WxAy`` -> the
    size and BOPS of Wx/Ay: the paper compares at similar or better compression). Needs the
    layer costs that ``calibrate`` probes."""

    def __init__(self, model: nn.Module) -> None:
        layers = list(quant_layers(model))
        if not all(m.macs for m in layers):
            raise ValueError("mixed precision needs the layer costs: calibrate the model first")
        self.numel = {m.w_quant.name: m.weight.numel() for m in layers}
        self.fp_bits = FP_BITS * (sum(p.numel() for p in model.parameters()) - sum(self.numel.values()))
        self.costs = [(m.w_quant.name, m.feeder, m.macs) for m in layers]
        start = {q.name: q.bits for q in quantizers(model)}
        self.target_size, self.target_bops = self.size(start), self.bops(start)

    def size(self, bits: dict[str, int]) -> int:
        """Model size in bits: quantized weights at their bits, every other parameter at 32."""
        return self.fp_bits + sum(n * bits[name] for name, n in self.numel.items())

    def bops(self, bits: dict[str, int]) -> int:
        return sum(macs * bits[w] * (bits[a] if a in bits else FP_BITS) for w, a, macs in self.costs)

    def admissible(self, bits: dict[str, int]) -> bool:
        """Neither size nor BOPS above the target (up to summation order)."""
        tol = 1 + 1e-9  # the same plan summed in another order must not count as over
        return self.size(bits) <= self.target_size * tol and self.bops(bits) <= self.target_bops * tol
