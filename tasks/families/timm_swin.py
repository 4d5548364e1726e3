"""timm Swin: the window-attention adapter and the reference-layout sites of PSAQ-ViT's
``models/swin_quant.py`` (zkkli/PSAQ-ViT)."""
from __future__ import annotations

import torch
from timm.models.swin_transformer import PatchMerging, SwinTransformer, SwinTransformerBlock, WindowAttention
from torch import nn

from clamp.quant.attention import QuantWindowAttentionBase, TokensGrid, register_attention, unwindow
from clamp.quant.reference import (
    MakeQuantizer,
    join,
    patch_embed_sites,
    patch_merging_sites,
    prenorm_block_sites,
    quantize_input,
    quantize_output,
    register_block_sites,
    register_model_sites,
)


@register_attention(WindowAttention)
class QuantWindowAttention(QuantWindowAttentionBase):
    """timm Swin ``WindowAttention`` (relative position bias, shifted-window mask)."""

    @staticmethod
    def mhsa_grid(net: nn.Module, block: nn.Module, x: torch.Tensor, block_args: tuple) -> TokensGrid:
        return x, unwindow(x, block.input_resolution, block.window_size, block.shift_size)


class RefSwinBlock(SwinTransformerBlock):
    """timm ``SwinTransformerBlock`` with both residual sums quantized."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = self.res1(x + self.drop_path1(self._attn(self.norm1(x))))
        x = x.reshape(B, -1, C)
        x = self.res2(x + self.drop_path2(self.mlp(self.norm2(x))))
        return x.reshape(B, H, W, C)


@register_block_sites(SwinTransformerBlock)
def _swin_block(block: SwinTransformerBlock, name: str, make: MakeQuantizer) -> None:
    prenorm_block_sites(block, name, make, RefSwinBlock)


register_block_sites(PatchMerging)(patch_merging_sites)


@register_model_sites(SwinTransformer)
def _swin(model: SwinTransformer, name: str, make: MakeQuantizer) -> None:
    if getattr(model, "absolute_pos_embed", None) is not None:
        raise ValueError("the reference layout has no site for Swin's absolute position embedding: "
                         "use layout=inputs for this model")
    patch_embed_sites(model.patch_embed, join(name, "patch_embed"), make)
    quantize_output(model.norm, make(join(name, "norm.out")))
    quantize_input(model.head.fc, make(join(name, "head.fc.input")))  # the pooled features
    quantize_output(model.head.fc, make(join(name, "head.fc.out")))
