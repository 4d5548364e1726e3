"""Capture every transformer block's MHSA output (attn·v, heads merged, before the projection).

Both PSAQ-ViT's patch-similarity prior and CLAMP-ViT's patch-contrastive loss read it. The
output is the input of the attention's ``proj`` Linear, so a pre-hook there sees it for the FP
modules and their quantized adapters alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.swin_transformer import window_reverse
from torch import nn

from clamp.quant.attention import ADAPTERS, QuantAttentionBase


@dataclass
class MHSAOutput:
    """One block's MHSA output. ``tokens``: (B', N, C) as the attention saw them (Swin: one row
    per window) with prefix tokens dropped; ``grid``: (B, H, W, C) patch tokens on their
    spatial grid (Swin: windows and shift undone)."""

    tokens: torch.Tensor
    grid: torch.Tensor
    num_heads: int

    def heads(self) -> torch.Tensor:
        """(B', heads, N, C / heads): undo the head merge."""
        b, n, c = self.tokens.shape
        return self.tokens.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, QuantAttentionBase) or type(module) in ADAPTERS


def transformer_blocks(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Blocks in forward order: the modules whose ``attn`` child is a (quantized) attention."""
    return [(name, m) for name, m in net.named_modules() if _is_attention(getattr(m, "attn", None) or nn.Identity())]


def _vit_grid(net: nn.Module) -> tuple[int, int]:
    return tuple(net.patch_embed.grid_size)


class MHSACapture:
    """Context manager: ``outputs`` lists the MHSA output of every block of the last forward."""

    def __init__(self, net: nn.Module) -> None:
        self.blocks = transformer_blocks(net)
        if not self.blocks:
            raise ValueError(f"no transformer block with a supported attention in {type(net).__name__}")
        self.net = net
        self.outputs: list[MHSAOutput] = []
        self._handles: list = []

    def __enter__(self) -> MHSACapture:
        for _, block in self.blocks:
            self._handles.append(block.attn.proj.register_forward_pre_hook(self._hook(block)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.outputs = []

    def _hook(self, block: nn.Module):
        attn = block.attn.fp if isinstance(block.attn, QuantAttentionBase) else block.attn

        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            if hasattr(block, "shift_size"):  # Swin: (B * windows, window area, C)
                tokens, grid = x, self._swin_grid(block, x)
            else:  # ViT/DeiT: (B, prefix + patches, C)
                h, w = _vit_grid(self.net)
                tokens = x[:, x.shape[1] - h * w:]
                grid = tokens.reshape(x.shape[0], h, w, x.shape[2])
            self.outputs.append(MHSAOutput(tokens, grid, attn.num_heads))
        return hook

    @staticmethod
    def _swin_grid(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        H, W = block.input_resolution
        wh, ww = block.window_size
        Hp, Wp = H + (-H) % wh, W + (-W) % ww
        grid = window_reverse(x.reshape(-1, wh, ww, x.shape[-1]), (wh, ww), Hp, Wp)[:, :H, :W]
        if any(block.shift_size):
            grid = torch.roll(grid, shifts=tuple(block.shift_size), dims=(1, 2))
        return grid
