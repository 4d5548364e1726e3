"""Micro model zoo: timm's own VisionTransformer and SwinTransformer classes at 32x32 input,
registered with timm (default cfg, pretrained file) so they are built exactly like paper models."""
from __future__ import annotations

from pathlib import Path

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
from timm.models.vision_transformer import VisionTransformer

from tasks.micro.fashion_mnist import CLASSES, MEAN, STD

CHECKPOINTS = Path(__file__).parent / "checkpoints"
INPUT_SIZE = 32
TAG = "fmnist"


def checkpoint_path(name: str) -> Path:
    return CHECKPOINTS / f"{name}.safetensors"


def _cfg(name: str) -> dict:
    return {"file": str(checkpoint_path(name)), "input_size": (3, INPUT_SIZE, INPUT_SIZE), "mean": MEAN, "std": STD,
            "crop_pct": 1.0, "interpolation": "bilinear", "num_classes": len(CLASSES), "first_conv": "patch_embed.proj",
            "classifier": "head"}


MICRO_MODELS = ("micro_deit_patch4_32", "micro_swin_patch2_window4_32")
default_cfgs = generate_default_cfgs({f"{name}.{TAG}": _cfg(name) for name in MICRO_MODELS})


def _build(cls: type, name: str, pretrained: bool, **kwargs):
    if pretrained and not checkpoint_path(name).is_file():
        raise FileNotFoundError(f"no checkpoint {checkpoint_path(name)}: "
                                f"train it with `python -m tasks.micro.train {name}`")
    filter_fn = checkpoint_filter_fn if cls is SwinTransformer else None
    return build_model_with_cfg(cls, name, pretrained, pretrained_filter_fn=filter_fn, **kwargs)


@register_model
def micro_deit_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """DeiT-style ViT: 8x8 patches of 4 px, 4 blocks of width 96, 3 heads, class token."""
    args = dict(img_size=INPUT_SIZE, patch_size=4, embed_dim=96, depth=4, num_heads=3, num_classes=len(CLASSES))
    return _build(VisionTransformer, "micro_deit_patch4_32", pretrained, **{**args, **kwargs})


@register_model
def micro_swin_patch2_window4_32(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """Swin: 16x16 patches of 2 px, windows of 4, two stages (2+2 blocks) of width 32 then 64."""
    args = dict(img_size=INPUT_SIZE, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
                num_classes=len(CLASSES))
    return _build(SwinTransformer, "micro_swin_patch2_window4_32", pretrained, **{**args, **kwargs})
