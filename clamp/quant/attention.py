"""Attention adapters: re-run an attention module's forward with its two matmuls exposed.

Fused attention (scaled_dot_product_attention) hides q·kᵀ and attn·v, so each attention
implementation gets a small adapter that computes the same maths explicitly through
QuantMatMul. The adapters live with their model family (tasks/families/); here is what they
share: the base class, the registry, and the shifted-window attention that timm's and mm's Swin
both compute. Everything else about a model is generic module swapping (see wrap.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from clamp.quant.modules import QuantMatMul

TokensGrid = tuple[torch.Tensor, torch.Tensor]
ADAPTERS: dict[type[nn.Module], type[nn.Module]] = {}


def register_attention(fp_type: type[nn.Module]) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: the adapter replaces every module of ``fp_type`` when a model is wrapped."""
    def wrap(adapter: type[nn.Module]) -> type[nn.Module]:
        ADAPTERS[fp_type] = adapter
        return adapter
    return wrap


class QuantAttentionBase(nn.Module):
    """Holds the FP attention module (its qkv/proj become QuantLinear) and the two matmuls.

    Each adapter also knows its geometry: ``mhsa_grid`` puts the MHSA output (the input of
    ``proj``) back on the spatial patch grid, for the generation losses. Windowed adapters pass
    the relative-position-bias table through ``table_quant`` and the biased scores through
    ``bias_quant`` (quantizers in the ``reference`` layout, identities otherwise)."""

    windowed = False  # shifted-window attention (Swin)

    def __init__(self, fp: nn.Module, matmul_qk: QuantMatMul, matmul_av: QuantMatMul) -> None:
        super().__init__()
        self.fp, self.matmul_qk, self.matmul_av = fp, matmul_qk, matmul_av
        self.table_quant: nn.Module = nn.Identity()
        self.bias_quant: nn.Module = nn.Identity()

    @property
    def proj(self) -> nn.Module:
        """The output projection: its input is the MHSA output (heads merged) used by generation."""
        return self.fp.proj

    @staticmethod
    def mhsa_grid(net: nn.Module, block: nn.Module, x: torch.Tensor, block_args: tuple) -> TokensGrid:
        """(tokens (B', N, C) without prefix tokens, grid (B, H, W, C)) of the MHSA output ``x``
        of ``block`` in ``net``; ``block_args`` are the block's forward arguments."""
        raise NotImplementedError


def square_side(n: int) -> int:
    """The side of a square grid of ``n`` patch tokens."""
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} patch tokens are not a square grid: generate square images")
    return side


def grid_tokens(x: torch.Tensor, h: int, w: int) -> TokensGrid:
    """The last h*w tokens of ``x`` (B, N, C), the prefix tokens dropped, and them on their (h, w) grid."""
    tokens = x[:, x.shape[1] - h * w:]
    return tokens, tokens.reshape(x.shape[0], h, w, x.shape[2])


def relative_position_bias(table: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """(1, heads, n, n) bias of a window of ``n`` tokens from the (entries, heads) table."""
    return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """(B * nW, wh, ww, C) windows of an (h, w) map, row-major -> (B, h, w, C)."""
    wh, ww = window
    c = windows.shape[-1]
    x = windows.view(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.contiguous().view(-1, h, w, c)


def unwindow(x: torch.Tensor, hw: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Windows (B * nW, wh * ww, C) of a padded, cyclically shifted (H, W) map -> (B, H, W, C)."""
    H, W = hw
    wh, ww = window
    Hp, Wp = H + (-H) % wh, W + (-W) % ww
    grid = window_reverse(x.reshape(-1, wh, ww, x.shape[-1]), (wh, ww), Hp, Wp)
    if any(shift):
        grid = torch.roll(grid, shifts=tuple(shift), dims=(1, 2))
    return grid[:, :H, :W]


class QuantWindowAttentionBase(QuantAttentionBase):
    """Shifted-window attention with a relative-position-bias table (timm's ``WindowAttention``,
    mm's ``WindowMSA``: the same maths and attribute names). The shift mask, when given, is
    (nW, N, N) and added per window."""

    windowed = True

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = self.fp
        B_, N, _ = x.shape
        q, k, v = m.qkv(x).reshape(B_, N, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = relative_position_bias(self.table_quant(m.relative_position_bias_table), m.relative_position_index, N)
        attn = self.bias_quant(self.matmul_qk(q * m.scale, k.transpose(-2, -1)) + bias)
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, m.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, m.num_heads, N, N)
        x = self.matmul_av(m.attn_drop(attn.softmax(dim=-1)), v)
        return m.proj_drop(m.proj(x.transpose(1, 2).reshape(B_, N, -1)))
