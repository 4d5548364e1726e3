"""What mmdet's and mmseg's Swin share (the two packages ship the same classes twice): the
``WindowMSA`` adapter's geometry and the reference-layout sites at the places of PSAQ-ViT's
``models/swin_quant.py``. ``mmdet_swin`` and ``mmseg_swin`` register them for their own classes,
so neither task imports the other's package."""
from __future__ import annotations

import torch
from torch import nn

from clamp.quant.attention import QuantWindowAttentionBase, TokensGrid, register_attention, unwindow
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


class QuantMMWindowMSA(QuantWindowAttentionBase):
    """mm Swin ``WindowMSA`` (inside ``ShiftWindowMSA``, which pads, shifts and partitions the
    map; ``SwinBlock.forward(x, hw_shape)`` carries the map's size)."""

    @staticmethod
    def mhsa_grid(net: nn.Module, block: nn.Module, x: torch.Tensor, block_args: tuple) -> TokensGrid:
        shift, window = block.attn.shift_size, block.attn.window_size
        return x, unwindow(x, tuple(block_args[1]), (window, window), (shift, shift))


def _forward_swin_block(self: nn.Module, x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
    """mm ``SwinBlock.forward`` with the first residual sum quantized (the FFN adds the second)."""
    x = self.res1(x + self.attn(self.norm1(x), hw_shape))
    return self.ffn(self.norm2(x), identity=x)


def _swin(model: nn.Module, name: str, make: MakeQuantizer) -> None:
    if model.use_abs_pos_embed:
        raise ValueError("the reference layout has no site for Swin's absolute position embedding: "
                         "use layout=inputs for this backbone")
    patch_embed_sites(model.patch_embed, join(name, "patch_embed"), make, conv="projection")
    for i in model.out_indices:
        quantize_output(getattr(model, f"norm{i}"), make(join(name, f"norm{i}.out")))


def register_swin(package: str, window_msa: type[nn.Module], block: type[nn.Module],
                  merging: type[nn.Module], model: type[nn.Module]) -> None:
    """Register the adapter and the sites for one package's Swin classes."""
    register_attention(window_msa)(QuantMMWindowMSA)
    ref_block = type(f"Ref{package}{block.__name__}", (block,), {"forward": _forward_swin_block})

    def block_sites(b: nn.Module, name: str, make: MakeQuantizer) -> None:
        quantize_output(b.norm1, make(join(name, "norm1.out")))
        attention_sites(b.attn.w_msa, join(name, "attn.w_msa"), make)
        quantize_output(b.norm2, make(join(name, "norm2.out")))
        mlp_sites(b.ffn.layers[0][1], b.ffn.layers[1], join(name, "ffn"), make)
        quantize_output(b.ffn, make(join(name, "res2")))  # mmcv's FFN returns identity + out
        swap_class(b, ref_block, res1=make(join(name, "res1")))

    register_block_sites(block)(block_sites)
    register_block_sites(merging)(patch_merging_sites)
    register_model_sites(model)(_swin)
