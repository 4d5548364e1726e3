"""Bit-width plans: which bits every quantized tensor gets. Fixed precision is one value."""
from __future__ import annotations

from dataclasses import dataclass, field

from clamp.quant.quantizer import check_bits


@dataclass
class BitPlan:
    """Default weight and activation bits plus per-tensor overrides keyed by quantizer name
    (e.g. ``blocks.3.attn.qkv.weight``, ``blocks.3.attn.av.a``). 32 leaves a tensor in FP."""

    w_bits: int = 8
    a_bits: int = 8
    overrides: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_bits(self.w_bits)
        check_bits(self.a_bits)
        for bits in self.overrides.values():
            check_bits(bits)

    def bits(self, name: str) -> int:
        default = self.w_bits if name.endswith(".weight") else self.a_bits
        return self.overrides.get(name, default)
