"""Plain min-max calibration baselines: real training images (the oracle) and Gaussian noise."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clamp.quant import QuantConfig, calibrate, quantize_model
from clamp.registry import Method
from clamp.task import Task


def ptq(net: nn.Module, config: QuantConfig, images: torch.Tensor, batch_size: int = 32) -> nn.Module:
    """``net`` quantized and calibrated on ``images``."""
    return calibrate(quantize_model(net, config), images.split(batch_size))


@dataclass
class ImageCalibration(Method):
    """Min-max calibration on ``n`` images from ``images()``."""

    n: int = 32

    def images(self, task: Task, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def quantize_backbone(self, task: Task, net: nn.Module, config: QuantConfig, seed: int) -> tuple[nn.Module, dict]:
        images = self.images(task, seed).to(task.device)  # fewer than n where the split holds fewer
        return ptq(net, config, images), {"calibration": f"{self.name}:{len(images)}", "n_calib": len(images),
                                          "image_steps": 0}


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
