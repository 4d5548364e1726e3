"""timm ViT with relative position bias (``vit_relpos_*``, ``vit_srelpos_*``): the worked example
of README "Adding a model family". The attention adapter is all the ``inputs`` layout needs; the
block and model sites give the ``reference`` layout, at PSAQ-ViT's places (``models/vit_quant.py``,
zkkli/PSAQ-ViT) as far as the family has them: there is no position embedding, so no embedding
sum, and the class token joins the quantized patch embedding unchanged."""
from __future__ import annotations

import torch
from timm.models.vision_transformer_relpos import RelPosAttention, RelPosBlock, VisionTransformerRelPos
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
)


@register_attention(RelPosAttention)
class QuantRelPosAttention(QuantAttentionBase):
    """``RelPosAttention``: the bias is added to the scaled scores before the softmax."""

    def forward(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
        m = self.fp
        B, N, C = x.shape
        q, k, v = m.qkv(x).reshape(B, N, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.matmul_qk(m.q_norm(q) * m.scale, m.k_norm(k).transpose(-2, -1))
        if m.rel_pos is not None:
            attn = m.rel_pos(attn, shared_rel_pos=shared_rel_pos)
        elif shared_rel_pos is not None:
            attn = attn + shared_rel_pos
        x = self.matmul_av(m.attn_drop(attn.softmax(dim=-1)), v)
        return m.proj_drop(m.proj(x.transpose(1, 2).reshape(B, N, C)))

    @staticmethod
    def mhsa_grid(net: nn.Module, block: nn.Module, x: torch.Tensor, block_args: tuple) -> TokensGrid:
        return grid_tokens(x, *net.patch_embed.grid_size)


class RefRelPosBlock(RelPosBlock):
    """``RelPosBlock`` with both residual sums quantized."""

    def forward(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
        x = self.res1(x + self.drop_path1(self.ls1(self.attn(self.norm1(x), shared_rel_pos=shared_rel_pos))))
        return self.res2(x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))))


@register_block_sites(RelPosBlock)
def _block(block: RelPosBlock, name: str, make: MakeQuantizer) -> None:
    prenorm_block_sites(block, name, make, RefRelPosBlock)


@register_model_sites(VisionTransformerRelPos)
def _model(model: VisionTransformerRelPos, name: str, make: MakeQuantizer) -> None:
    patch_embed_sites(model.patch_embed, join(name, "patch_embed"), make)
    quantize_input(model.head, make(join(name, "head.input")))  # the pooled token the head reads
    quantize_output(model.head, make(join(name, "head.out")))
