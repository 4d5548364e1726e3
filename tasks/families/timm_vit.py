"""timm ViT / DeiT, and DINOv2 (timm's VisionTransformer with LayerScale, whose branches
``prenorm_block_sites`` quantizes after the scale): the attention adapter and the reference-layout
sites of PSAQ-ViT's ``models/vit_quant.py`` (zkkli/PSAQ-ViT)."""
from __future__ import annotations

import torch
from timm.layers.attention import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from clamp.quant.attention import QuantAttentionBase, TokensGrid, grid_tokens, register_attention
from clamp.quant.reference import (
    MakeQuantizer,
    join,
    patch_embed_sites,
    prenorm_block_sites,
    quantize_input,
    quantize_output,
    register_block_sites,
    register_model_sites,
    swap_class,
)


@register_attention(Attention)
class QuantViTAttention(QuantAttentionBase):
    """timm ViT/DeiT ``Attention``."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("masked attention is not used by the ViTs this suite quantizes")
        m = self.fp
        B, N, _ = x.shape
        gate = m.gate(x).sigmoid() if m.gate is not None else None
        q, k, v = m.qkv(x).reshape(B, N, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = m.q_norm(q), m.k_norm(k)
        attn = self.matmul_qk(q * m.scale, k.transpose(-2, -1)).softmax(dim=-1)
        x = self.matmul_av(m.attn_drop(attn), v)
        x = m.norm(x.transpose(1, 2).reshape(B, N, m.attn_dim))
        if gate is not None:
            x = x * gate
        return m.proj_drop(m.proj(x))

    @staticmethod
    def mhsa_grid(net: nn.Module, block: nn.Module, x: torch.Tensor, block_args: tuple) -> TokensGrid:
        return grid_tokens(x, *net.patch_embed.grid_size)


class RefViTBlock(Block):
    """timm ``Block`` with both residual sums quantized."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = self.res1(x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask,
                                                              is_causal=is_causal))))
        return self.res2(x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))))


@register_block_sites(Block)
def _vit_block(block: Block, name: str, make: MakeQuantizer) -> None:
    prenorm_block_sites(block, name, make, RefViTBlock)


def _embed(model: nn.Module, x: torch.Tensor, prefix_tokens: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """Prefix tokens + patch tokens, + position embedding, each quantized (PSAQ-ViT's
    ``qact_embed``, ``qact_pos`` and ``qact1``)."""
    prefix = [t.expand(x.shape[0], -1, -1) for t in prefix_tokens if t is not None]
    x = model.embed_quant(torch.cat([*prefix, x], dim=1))
    return model.pos_drop(model.sum_quant(x + model.pos_quant(model.pos_embed)))


class RefVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer`` with its embedding sum quantized."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        return _embed(self, x, (self.cls_token, self.reg_token))


class RefVisionTransformerDistilled(VisionTransformerDistilled):
    """timm distilled DeiT: class and distillation tokens, then the same embedding sum."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        return _embed(self, x, (self.cls_token, self.dist_token))


@register_model_sites(VisionTransformer)
@register_model_sites(VisionTransformerDistilled)
def _vit(model: VisionTransformer, name: str, make: MakeQuantizer) -> None:
    if model.pos_embed is None or model.no_embed_class or model.dynamic_img_size:
        raise ValueError("the reference layout supports ViTs whose position embedding covers the class token "
                         "at a fixed image size (DeiT, ViT): use layout=inputs for this one")
    patch_embed_sites(model.patch_embed, join(name, "patch_embed"), make)
    # PSAQ-ViT quantizes norm(x)[:, 0], the pooled token the head reads: the head's input
    heads = ["head", "head_dist"] if isinstance(model, VisionTransformerDistilled) else ["head"]
    for head in heads:
        quantize_input(getattr(model, head), make(join(name, head, "input")))
        quantize_output(getattr(model, head), make(join(name, head, "out")))
    ref = RefVisionTransformerDistilled if isinstance(model, VisionTransformerDistilled) else RefVisionTransformer
    swap_class(model, ref, embed_quant=make(join(name, "embed")), pos_quant=make(join(name, "pos_embed")),
               sum_quant=make(join(name, "pos_sum")))
