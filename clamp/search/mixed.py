"""Mixed-precision budget: the model size and BOPS of any bit assignment, computed exactly as
clamp.quant.compression_report does, without touching the model."""
from __future__ import annotations

from torch import nn

from clamp.quant import FP_BITS, quantizers
from clamp.quant.modules import QuantMatMul
from clamp.quant.wrap import quant_layers

RULES = ("size+bops", "bops")


class BitBudget:
    """Size (bits) and BOPS of a bit assignment of ``model``'s quantizers, against those of the plan
    the model was built with (uniform ``MP-WxAy`` -> Wx/Ay). Rules: ``size+bops`` (ours, the first):
    neither the size nor the BOPS of the quantized layers above the target, so a weight rises only if
    another falls; ``bops``: the BOPS alone, the activation matmuls q·kᵀ and attn·v counted (an FP
    operand at 32 bits), the reading of the paper's "similar compression" under which its plans
    (W4.9/A6.2 for MP-W4A8) fit. Needs the costs that ``calibrate`` probes."""

    def __init__(self, model: nn.Module, rule: str = "size+bops") -> None:
        if rule not in RULES:
            raise ValueError(f"unknown budget {rule!r}: use {' or '.join(RULES)}")
        layers = list(quant_layers(model))
        matmuls = [m for m in model.modules() if isinstance(m, QuantMatMul)]
        if not all(m.macs for m in [*layers, *(matmuls if rule == "bops" else [])]):
            raise ValueError("mixed precision needs the layer costs: calibrate the model first")
        self.rule = rule
        self.numel = {m.w_quant.name: m.weight.numel() for m in layers}
        self.fp_bits = FP_BITS * (sum(p.numel() for p in model.parameters()) - sum(self.numel.values()))
        self.costs = [(m.w_quant.name, m.feeder, m.macs) for m in layers]
        self.matmul_costs = [(*m.feeders, m.macs) for m in matmuls] if rule == "bops" else []
        start = {q.name: q.bits for q in quantizers(model)}
        self.target_size, self.target_bops = self.size(start), self.bops(start)

    @property
    def cost_sites(self) -> set[str]:
        """The quantizers whose bits the rule counts: the weights, the layers' and (``bops``) the
        matmuls' input quantizers. Every other site costs nothing: raising it is free."""
        sites = {w for w, _, _ in self.costs} | {a for _, a, _ in self.costs}
        if self.rule == "bops":
            sites |= {q for a, b, _ in self.matmul_costs for q in (a, b)}
        return sites - {None}

    def size(self, bits: dict[str, int]) -> int:
        """Model size in bits: quantized weights at their bits, every other parameter at 32."""
        return self.fp_bits + sum(n * bits[name] for name, n in self.numel.items())

    def bops(self, bits: dict[str, int]) -> int:
        def b(name: str | None) -> int:
            return bits[name] if name in bits else FP_BITS
        return (sum(macs * bits[w] * b(a) for w, a, macs in self.costs)
                + sum(macs * b(a) * b(c) for a, c, macs in self.matmul_costs))

    def admissible(self, bits: dict[str, int]) -> bool:
        """Within the rule's targets (up to summation order)."""
        tol = 1 + 1e-9  # the same plan summed in another order must not count as over
        within_bops = self.bops(bits) <= self.target_bops * tol
        return within_bops if self.rule == "bops" else within_bops and self.size(bits) <= self.target_size * tol
