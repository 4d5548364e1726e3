"""Attention adapters for the OpenMMLab backbones: mmdet's and mmseg's Swin ``WindowMSA``, and
mmseg's VisionTransformer, whose mmcv ``MultiheadAttention`` wraps torch's fused
``nn.MultiheadAttention``. That one is first rewritten as ``SelfAttention`` (same weights, same
maths, qkv and proj as plain Linears) so that it quantizes like every other attention.
"""
from __future__ import annotations

import math

import torch
from mmcv.cnn.bricks.transformer import MultiheadAttention
from mmdet.models.backbones.swin import WindowMSA as DetWindowMSA
from mmseg.models.backbones.swin import WindowMSA as SegWindowMSA
from torch import nn

from clamp.quant.attention import (
    QuantAttentionBase,
    TokensGrid,
    register_attention,
    relative_position_bias,
    square_side,
    unwindow,
)


def _window_attention(a: QuantAttentionBase, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """mm ``WindowMSA.forward`` through the adapter ``a``'s matmuls and bias quantizers."""
    m = a.fp
    B, N, C = x.shape
    q, k, v = m.qkv(x).reshape(B, N, 3, m.num_heads, C // m.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    bias = relative_position_bias(a.table_quant(m.relative_position_bias_table), m.relative_position_index, N)
    attn = a.bias_quant(a.matmul_qk(q * m.scale, k.transpose(-2, -1)) + bias)
    if mask is not None:
        nW = mask.shape[0]
        attn = (attn.view(B // nW, nW, m.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)).view(-1, m.num_heads, N, N)
    x = a.matmul_av(m.attn_drop(m.softmax(attn)), v).transpose(1, 2).reshape(B, N, C)
    return m.proj_drop(m.proj(x))


class QuantMMWindowMSA(QuantAttentionBase):
    """mmdet / mmseg Swin ``WindowMSA`` (inside ``ShiftWindowMSA``, which pads, shifts and
    partitions the map; ``SwinBlock.forward(x, hw_shape)`` carries the map's size)."""

    windowed = True

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return _window_attention(self, x, mask)

    @staticmethod
    def mhsa_grid(net: nn.Module, block: nn.Module, x: torch.Tensor, block_args: tuple) -> TokensGrid:
        shift, window = block.attn.shift_size, block.attn.window_size
        return x, unwindow(x, tuple(block_args[1]), (window, window), (shift, shift))


register_attention(DetWindowMSA)(QuantMMWindowMSA)
register_attention(SegWindowMSA)(QuantMMWindowMSA)


def _self_attention(m: SelfAttention, x: torch.Tensor, matmul_qk, matmul_av) -> torch.Tensor:
    B, N, C = x.shape
    q, k, v = m.qkv(x).reshape(B, N, 3, m.num_heads, C // m.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    attn = matmul_qk(q * m.scale, k.transpose(-2, -1)).softmax(dim=-1)
    return m.proj(matmul_av(m.attn_drop(attn), v).transpose(1, 2).reshape(B, N, C))


class SelfAttention(nn.Module):
    """mmcv ``MultiheadAttention`` (batch first, self-attention, with its residual) rewritten
    with explicit matmuls: ``in_proj`` becomes ``qkv``, ``out_proj`` becomes ``proj``."""

    def __init__(self, mha: MultiheadAttention) -> None:
        super().__init__()
        if not mha.batch_first:
            raise NotImplementedError("only batch-first mmcv MultiheadAttention is used by mmseg's ViT")
        torch_mha = mha.attn
        dim = torch_mha.embed_dim
        self.num_heads = torch_mha.num_heads
        self.scale = (dim // self.num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=torch_mha.in_proj_bias is not None)
        self.proj = nn.Linear(dim, dim, bias=torch_mha.out_proj.bias is not None)
        with torch.no_grad():
            self.qkv.weight.copy_(torch_mha.in_proj_weight)
            self.proj.weight.copy_(torch_mha.out_proj.weight)
            if self.qkv.bias is not None:
                self.qkv.bias.copy_(torch_mha.in_proj_bias)
            if self.proj.bias is not None:
                self.proj.bias.copy_(torch_mha.out_proj.bias)
        self.attn_drop = nn.Dropout(torch_mha.dropout)
        self.proj_drop, self.dropout_layer = mha.proj_drop, mha.dropout_layer

    def attend(self, x: torch.Tensor, matmul_qk, matmul_av) -> torch.Tensor:
        return _self_attention(self, x, matmul_qk, matmul_av)

    def forward(self, query: torch.Tensor, identity: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if any(v is not None for v in kwargs.values()):
            raise NotImplementedError("SelfAttention supports self-attention without masks or positions only")
        out = self.proj_drop(self.attend(query, torch.matmul, torch.matmul))
        return (query if identity is None else identity) + self.dropout_layer(out)


@register_attention(SelfAttention)
class QuantSelfAttention(QuantAttentionBase):
    """``SelfAttention`` (mmseg ViT) with its matmuls quantized."""

    def forward(self, query: torch.Tensor, identity: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        m = self.fp
        out = m.proj_drop(m.attend(query, self.matmul_qk, self.matmul_av))
        return (query if identity is None else identity) + m.dropout_layer(out)

    @staticmethod
    def mhsa_grid(net: nn.Module, block: nn.Module, x: torch.Tensor, block_args: tuple) -> TokensGrid:
        tokens = x[:, x.shape[1] - math.isqrt(x.shape[1]) ** 2:]  # drop the class token
        side = square_side(tokens.shape[1])
        return tokens, tokens.reshape(x.shape[0], side, side, x.shape[2])


def rewrite_attention(model: nn.Module) -> nn.Module:
    """Replace every mmcv ``MultiheadAttention`` in ``model`` by the equivalent ``SelfAttention``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, MultiheadAttention):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, SelfAttention(module))
    return model
