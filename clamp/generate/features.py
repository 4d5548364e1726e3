"""Capture every transformer block's MHSA output (attn·v, heads merged, before the projection).

Both PSAQ-ViT's patch-similarity prior and CLAMP-ViT's patch-contrastive loss read it. The
output is the input of the attention's ``proj`` Linear, so a pre-hook there sees it for the FP
modules and their quantized adapters alike; the attention's adapter puts it on its patch grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from clamp.quant.attention import ADAPTERS, QuantAttentionBase
from clamp.quant.families import load_families


@dataclass
class MHSAOutput:
    """One block's MHSA output. ``tokens``: (B', N, C) as the attention saw them (Swin: one row
    per window) with prefix tokens dropped; ``grid``: (B, H, W, C) patch tokens on their
    spatial grid (Swin: windows and shift undone)."""

    tokens: torch.Tensor
    grid: torch.Tensor
    num_heads: int
    windowed: bool = False  # tokens are windows (Swin) rather than whole images

    def heads(self) -> torch.Tensor:
        """(B', heads, N, C / heads): undo the head merge."""
        b, n, c = self.tokens.shape
        return self.tokens.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)


def _adapted(module: nn.Module | None) -> bool:
    return isinstance(module, QuantAttentionBase) or type(module) in ADAPTERS


def attention_of(block: nn.Module) -> nn.Module | None:
    """The block's (FP or quantized) attention with a registered adapter: ``block.attn``, or its
    child when ``attn`` wraps it (mm Swin's ``ShiftWindowMSA``); else None."""
    attn = getattr(block, "attn", None)
    if attn is None or _adapted(attn):
        return attn
    return next((child for child in attn.children() if _adapted(child)), None)


def adapter_of(attn: nn.Module) -> type[QuantAttentionBase]:
    return type(attn) if isinstance(attn, QuantAttentionBase) else ADAPTERS[type(attn)]


def transformer_blocks(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Blocks in forward order: the modules whose ``attn`` is a (quantized) attention."""
    load_families()
    return [(name, m) for name, m in net.named_modules() if attention_of(m) is not None]


def is_windowed(net: nn.Module) -> bool:
    """Shifted-window attention (Swin) rather than global attention (ViT/DeiT)."""
    return any(adapter_of(attention_of(block)).windowed for _, block in transformer_blocks(net))


def patch_tokens(net: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A block's output as (B, patches, C): NHWC grids flattened, class tokens dropped (timm
    says how many; for mm backbones, whatever exceeds a square grid)."""
    if out.dim() == 4:
        return out.flatten(1, 2)
    prefix = getattr(net, "num_prefix_tokens", None)
    if prefix is None:
        prefix = out.shape[1] - math.isqrt(out.shape[1]) ** 2
    return out[:, prefix:]


class MHSACapture:
    """Context manager: ``outputs`` lists the MHSA output of every block of the last forward."""

    def __init__(self, net: nn.Module) -> None:
        self.blocks = [block for _, block in transformer_blocks(net)]
        if not self.blocks:
            raise ValueError(f"no transformer block with a supported attention in {type(net).__name__}")
        self.net = net
        self.outputs: list[MHSAOutput] = []
        self._args: dict[int, tuple] = {}
        self._handles: list = []

    def __enter__(self) -> MHSACapture:
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(
                lambda _m, args, i=i: self._args.__setitem__(i, args)))
            self._handles.append(attention_of(block).proj.register_forward_pre_hook(self._hook(i, block)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.outputs = []

    def _hook(self, i: int, block: nn.Module):
        attn = attention_of(block)
        adapter, fp = adapter_of(attn), attn.fp if isinstance(attn, QuantAttentionBase) else attn

        def hook(_module: nn.Module, args: tuple) -> None:
            tokens, grid = adapter.mhsa_grid(self.net, block, args[0], self._args[i])
            self.outputs.append(MHSAOutput(tokens, grid, fp.num_heads, adapter.windowed))
        return hook
