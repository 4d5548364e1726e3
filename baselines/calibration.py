"""Plain min-max calibration baselines: real training images (the oracle) and Gaussian noise."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clamp.quant import QuantConfig, calibrate, quantize_model
from clamp.task import Task


def ptq(task: Task, model: nn.Module, config: QuantConfig, images: torch.Tensor,
        batch_size: int = 32) -> nn.Module:
    """Quantize the task's network and calibrate it on ``images``; the model with it back in."""
    if config.mixed:
        raise ValueError("this method has no mixed-precision search: run it at fixed precision (W4A8, ...)")
    qnet = quantize_model(task.backbone(model), config)
    calibrate(qnet, images.split(batch_size))
    return task.replace_backbone(model, qnet)


@dataclass
class ImageCalibration:
    """Min-max calibration on ``n`` images from ``images()``."""

    n: int = 32
    label_free = True
    mixed_precision = False

    def images(self, task: Task, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def quantize(self, task: Task, model: nn.Module, config: QuantConfig, seed: int) -> tuple[nn.Module, dict]:
        images = self.images(task, seed).to(task.device)  # fewer than n where the split holds fewer
        return ptq(task, model, config, images), {"calibration": f"{self.name}:{len(images)}",
                                                  "n_calib": len(images)}


class RealData(ImageCalibration):
    """``n`` real training images: the upper bound data-free methods aim for."""

    name = "real"

    def images(self, task: Task, seed: int) -> torch.Tensor:
        return task.real_images(self.n, seed)


class GaussianNoise(ImageCalibration):
    """``n`` images of standard Gaussian noise in normalised input space."""

    name = "gaussian"

    def images(self, task: Task, seed: int) -> torch.Tensor:
        return torch.randn((self.n, *task.input_spec.shape), generator=torch.Generator().manual_seed(seed))
