"""mmseg's VisionTransformer (UPerNet ViT/DeiT): its mmcv ``MultiheadAttention`` wraps torch's
fused ``nn.MultiheadAttention``, so ``rewrite_attention`` first turns it into ``SelfAttention``
(same weights, same maths, qkv and proj as plain Linears), which quantizes like every other
attention; then the reference-layout sites of PSAQ-ViT's ``models/vit_quant.py``."""
from __future__ import annotations

import math

import torch
from mmcv.cnn.bricks.transformer import MultiheadAttention
from mmseg.models.backbones.vit import TransformerEncoderLayer, VisionTransformer
from torch import nn

from clamp.quant.attention import QuantAttentionBase, TokensGrid, register_attention, square_side
from clamp.quant.reference import (
    MakeQuantizer,
    attention_sites,
    join,
    mlp_sites,
    patch_embed_sites,
    quantize_output,
    register_block_sites,
    register_model_sites,
    swap_class,
)


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


@register_block_sites(TransformerEncoderLayer)
def _vit_layer(layer: TransformerEncoderLayer, name: str, make: MakeQuantizer) -> None:
    """mmseg ViT layer: its attention and FFN each return identity + out, the two residual sums."""
    quantize_output(layer.norm1, make(join(name, "norm1.out")))
    attention_sites(layer.attn, join(name, "attn"), make)
    quantize_output(layer.attn, make(join(name, "res1")))
    quantize_output(layer.norm2, make(join(name, "norm2.out")))
    mlp_sites(layer.ffn.layers[0][1], layer.ffn.layers[1], join(name, "ffn"), make)
    quantize_output(layer.ffn, make(join(name, "res2")))


class RefSegViT(VisionTransformer):
    """mmseg ``VisionTransformer`` with the class-token concatenation, the (resized) position
    embedding and their sum quantized."""

    def _pos_embeding(self, patched_img: torch.Tensor, hw_shape: tuple[int, int],
                      pos_embed: torch.Tensor) -> torch.Tensor:
        x = self.embed_quant(patched_img)
        if x.shape[1] != pos_embed.shape[1]:
            grid = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
            pos_embed = self.resize_pos_embed(pos_embed, hw_shape, grid, self.interpolate_mode)
        return self.drop_after_pos(self.sum_quant(x + self.pos_quant(pos_embed)))


@register_model_sites(VisionTransformer)
def _seg_vit(model: VisionTransformer, name: str, make: MakeQuantizer) -> None:
    if model.pre_norm or not model.with_cls_token:
        raise ValueError("the reference layout supports mmseg ViTs with a class token and no pre-norm: "
                         "use layout=inputs for this backbone")
    patch_embed_sites(model.patch_embed, join(name, "patch_embed"), make, conv="projection")
    if model.final_norm:
        quantize_output(model.norm1, make(join(name, "norm1.out")))
    swap_class(model, RefSegViT, embed_quant=make(join(name, "embed")), pos_quant=make(join(name, "pos_embed")),
               sum_quant=make(join(name, "pos_sum")))
