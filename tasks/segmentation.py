"""Semantic segmentation with mmseg: ADE20K at paper scale, the Fashion-MNIST canvases at micro
scale; mIoU, mAcc and aAcc from mmseg's own IoUMetric."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from tasks.fake_data import random_image
from tasks.families.mmseg_vit import rewrite_attention
from tasks.mm import MMTask

ADE20K_ENV = "CLAMP_ADE20K"


class SegmentationTask(MMTask):
    """An mmseg segmentor (config + checkpoint) whose ViT or Swin backbone the methods quantize."""

    name = "segmentation"
    metric = "mIoU"
    scope = "mmseg"
    package = "mmseg"
    data_env = ADE20K_ENV
    data_what = "ADE20K: the ADEChallengeData2016 folder (images/ and annotations/, training/ and validation/)"
    micro_models = ("micro_upernet_deit_fmnist",)
    paper_models = ("vit_deit-s16_upernet_8xb2-80k_ade20k-512x512",
                    "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512",
                    "swin-small-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512")
    smoke_subset = ("vit_deit-s16_upernet_8xb2-80k_ade20k-512x512", ("real", "gaussian"))

    @staticmethod
    def fake_dataset(root: Path, rng: np.random.Generator, n: int = 2) -> Path:
        """ADEChallengeData2016/{images,annotations}/{training,validation}: 683x512 JPEGs and PNG label
        maps with values 0..150 (0 is ignored, as reduce_zero_label makes it)."""
        base = root / "ADEChallengeData2016"
        for split in ("training", "validation"):
            for i in range(n):
                random_image(base / "images" / split / f"ADE_{split}_{i:08d}.jpg", (683, 512), rng)
                label = base / "annotations" / split / f"ADE_{split}_{i:08d}.png"
                label.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 151, (512, 683), dtype=np.uint8)).save(label)
        return base

    def _data_root(self, data_root: str | None) -> Path:
        root = super()._data_root(data_root)
        if not (root / "images" / "validation").is_dir() or not (root / "annotations" / "validation").is_dir():
            raise FileNotFoundError(f"ADE20K not found at {str(root)!r}: pass --data-root or set {ADE20K_ENV} to "
                                    f"{self.data_what.split(': ', 1)[1]}")
        return root

    def _set_data(self, cfg, root: Path) -> None:
        for name in ("train_dataloader", "test_dataloader"):
            if name in cfg:
                cfg[name].dataset.data_root = str(root)

    def prepare(self, model: nn.Module) -> nn.Module:
        return rewrite_attention(model)  # mmseg's ViT: torch's fused attention -> explicit matmuls

    def train_images(self) -> Path:
        return self.data_root / "images" / "training"

    def test_config(self):
        dataloader, evaluator = super().test_config()
        if self.n_eval is not None:
            dataloader = dataloader.copy()
            dataloader.dataset = {**dataloader.dataset, "indices": self.n_eval}
        return dataloader, evaluator

    def convert(self, metrics: dict) -> dict[str, float]:
        """IoUMetric already reports percents."""
        out = {k: round(float(metrics[k]), 2) for k in ("mIoU", "mAcc", "aAcc") if k in metrics}
        out["n_eval"] = self.n_eval or len(list((self.data_root / "images" / "validation").iterdir()))
        return out
