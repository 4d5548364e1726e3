"""Reference-layout sites (clamp/quant/reference.py) of the OpenMMLab backbones: mmdet's and
mmseg's SwinTransformer and mmseg's VisionTransformer, at the places PSAQ-ViT's
``models/swin_quant.py`` and ``models/vit_quant.py`` put their QuantAct modules. The backbone's
output norms are quantized; neck and heads follow ``quant_neck``.
"""
from __future__ import annotations

import torch
from mmdet.models.backbones.swin import SwinBlock as DetSwinBlock
from mmdet.models.backbones.swin import SwinTransformer as DetSwin
from mmdet.models.layers import PatchMerging as DetPatchMerging
from mmseg.models.backbones.swin import SwinBlock as SegSwinBlock
from mmseg.models.backbones.swin import SwinTransformer as SegSwin
from mmseg.models.backbones.vit import TransformerEncoderLayer, VisionTransformer
from mmseg.models.utils.embed import PatchMerging as SegPatchMerging
from torch import nn

from clamp.quant.reference import (
    MakeQuantizer,
    attention_sites,
    join,
    mlp_sites,
    patch_embed_sites,
    patch_merging_sites,
    quantize_output,
    register_block_sites,
    register_model_sites,
    swap_class,
)
from tasks import mm_attention  # noqa: F401  (the attention adapters the sites sit in)


def _forward_swin_block(self: nn.Module, x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
    """mm ``SwinBlock.forward`` with the first residual sum quantized (the FFN adds the second)."""
    x = self.res1(x + self.attn(self.norm1(x), hw_shape))
    return self.ffn(self.norm2(x), identity=x)


REF_SWIN_BLOCKS = {cls: type(f"Ref{cls.__module__.split('.')[0]}{cls.__name__}", (cls,),
                             {"forward": _forward_swin_block}) for cls in (DetSwinBlock, SegSwinBlock)}


def _swin_block(block: nn.Module, name: str, make: MakeQuantizer) -> None:
    quantize_output(block.norm1, make(join(name, "norm1.out")))
    attention_sites(block.attn.w_msa, join(name, "attn.w_msa"), make)
    quantize_output(block.norm2, make(join(name, "norm2.out")))
    mlp_sites(block.ffn.layers[0][1], block.ffn.layers[1], join(name, "ffn"), make)
    quantize_output(block.ffn, make(join(name, "res2")))  # mmcv's FFN returns identity + out
    swap_class(block, REF_SWIN_BLOCKS[type(block)], res1=make(join(name, "res1")))


def _swin(model: nn.Module, name: str, make: MakeQuantizer) -> None:
    if model.use_abs_pos_embed:
        raise ValueError("the reference layout has no site for Swin's absolute position embedding: "
                         "use layout=inputs for this backbone")
    patch_embed_sites(model.patch_embed, join(name, "patch_embed"), make, conv="projection")
    for i in model.out_indices:
        quantize_output(getattr(model, f"norm{i}"), make(join(name, f"norm{i}.out")))


for _cls in (DetSwinBlock, SegSwinBlock):
    register_block_sites(_cls)(_swin_block)
for _cls in (DetPatchMerging, SegPatchMerging):
    register_block_sites(_cls)(patch_merging_sites)
for _cls in (DetSwin, SegSwin):
    register_model_sites(_cls)(_swin)


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
