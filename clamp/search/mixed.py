"""Mixed precision budget: the compression ratio of a bit assignment, computed exactly as
clamp.quant.compression_report does, without touching the model."""
from __future__ import annotations

from torch import nn

from clamp.quant import FP_BITS, compression_report, is_weight, quantizers
from clamp.quant.wrap import quant_layers


class BitBudget:
    """Compression ratio and mean activation bits of any bit assignment of ``model``'s quantizers.

    A plan is admissible when its compression ratio is at least the target's and its mean
    activation bits at most the target's (the uniform plan the model was built with).
    """

    def __init__(self, model: nn.Module) -> None:
        self.numel = {m.w_quant.name: m.weight.numel() for m in quant_layers(model)}
        quantized = sum(self.numel.values())
        self.fp_bits = FP_BITS * (sum(p.numel() for p in model.parameters()) - quantized)
        self.n_params = quantized + self.fp_bits // FP_BITS
        self.acts = [q.name for q in quantizers(model) if not is_weight(q)]
        report = compression_report(model)
        self.target_ratio, self.target_a_bits = report["compression_ratio"], report["mean_a_bits"]

    def ratio(self, bits: dict[str, int]) -> float:
        total = self.fp_bits + sum(n * bits[name] for name, n in self.numel.items())
        return FP_BITS * self.n_params / total

    def mean_a_bits(self, bits: dict[str, int]) -> float:
        return sum(bits[name] for name in self.acts) / len(self.acts)

    def violation(self, bits: dict[str, int]) -> float:
        """0 for an admissible plan, else the relative shortfall (compression and activation bits)."""
        tol = 1e-9  # the same plan summed in another order must not count as a violation
        short = max(0.0, 1 - self.ratio(bits) / self.target_ratio - tol)
        over = max(0.0, self.mean_a_bits(bits) / self.target_a_bits - 1 - tol)
        return short + over
