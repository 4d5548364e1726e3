"""Published Swin detection checkpoints (SwinTransformer/Swin-Transformer-Object-Detection, built
on mmdet 2.x) -> the mmdet 3.x model of our Cascade Mask R-CNN Swin configs.

The heads (RPN, FPN, the three 4conv1f bbox heads and mask heads) keep their names between
mmdet 2.x and 3.x; the backbone is the Swin repository's own ``SwinTransformer``, whose names
differ from mmdet 3's, and whose patch merging concatenates the four 2x2 neighbours as
(top-left, bottom-left, top-right, bottom-right) blocks of C channels where mmdet 3's
``nn.Unfold`` interleaves them per channel as (top-left, top-right, bottom-left, bottom-right):
the reduction's input columns and the norm's parameters are permuted to match (checked against
both forwards in tests/test_detection.py).
"""
from __future__ import annotations

import re

import torch

RENAMES = [  # (Swin repository backbone name, mmdet 3 name), applied in order
    (r"^backbone\.patch_embed\.proj\.", "backbone.patch_embed.projection."),
    (r"^backbone\.layers\.(\d+)\.", r"backbone.stages.\1."),
    (r"\.attn\.(relative_position_bias_table|relative_position_index|qkv|proj)\b", r".attn.w_msa.\1"),
    (r"\.mlp\.fc1\.", ".ffn.layers.0.0."),
    (r"\.mlp\.fc2\.", ".ffn.layers.1."),
]
SWIN_REPO_KEY = "backbone.layers.0.blocks.0.attn.qkv.weight"  # present only in the Swin repository's layout


def unfold_order(t: torch.Tensor) -> torch.Tensor:
    """Reorder the last dimension (4C: four blocks of C in the Swin repo's order) to nn.Unfold's
    (C groups of the four positions in raster order)."""
    *lead, four_c = t.shape
    blocks = t.reshape(*lead, 4, four_c // 4)[..., [0, 2, 1, 3], :]  # -> TL, TR, BL, BR
    return blocks.transpose(-1, -2).reshape(*lead, four_c)


def is_swin_repo(state: dict[str, torch.Tensor]) -> bool:
    return SWIN_REPO_KEY in state


def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmdet 3.x state dict of a Swin repository detection state dict (other keys pass through)."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in RENAMES:
            new = re.sub(pattern, repl, new)
        if re.search(r"\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$", new):
            value = unfold_order(value)
        out[new] = value
    return out
