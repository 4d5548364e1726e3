"""PSAQ-ViT (ECCV 2022): patch-similarity-aware data generation, then min-max calibration.

Follows the reference code: Gaussian-noise start, batch 32, Adam (lr 0.20, 0.25 for Swin;
betas 0.5/0.9), two rounds of 500 steps with roll-jitter limits 15 then 30 and random flips,
cosine schedule with 100 warm-up steps, clipping to the valid pixel range. Loss:

    -(sum over blocks of the differential entropy of the patch-similarity distribution)
    + 1.0 x CE(random labels) + 0.05 x |TV(x) - v|,   v ~ U(2500, 3000)

The two 224-px constants scale with the input (``scale_to_input``): the TV target by
sqrt(B*H*W / (32*224*224)) and the jitter limits by H/224. ``scale_to_input=False`` keeps the
literal values for comparison: at 32 px they drive most pixels to the clip bound.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.calibration import ptq
from clamp.generate.cache import cached_images
from clamp.generate.features import MHSACapture, is_windowed
from clamp.generate.loop import GenerationConfig, image_stats, noise, optimise_images
from clamp.generate.priors import TVPrior, patch_similarity_entropy
from clamp.quant import QuantConfig
from clamp.registry import Method
from clamp.task import Task


@dataclass
class PSAQOptions:
    """What PSAQ-ViT V1 and V2 share: batch, image optimiser and the two priors."""

    n: int = 32
    lr: float | None = None  # None: 0.20, or 0.25 for Swin
    tv_weight: float = 0.05
    tv_target: tuple[float, float] = (2500.0, 3000.0)
    bandwidth: float = 0.01
    kde_points: int = 10
    scale_to_input: bool = True

    def tv_prior(self) -> TVPrior:
        return TVPrior(self.tv_weight, tuple(self.tv_target), self.scale_to_input)

    def generation(self, net: nn.Module, rounds: tuple[tuple[int, int], ...]) -> GenerationConfig:
        lr = self.lr if self.lr is not None else (0.25 if is_windowed(net) else 0.20)
        return GenerationConfig(batch=self.n, rounds=rounds, lr=lr, scale_jitter=self.scale_to_input)

    def prior_loss(self, x: torch.Tensor, capture: MHSACapture, tv_goal: float) -> torch.Tensor:
        entropy = patch_similarity_entropy(capture.outputs, self.bandwidth, self.kde_points)
        return -entropy + self.tv_prior()(x, tv_goal)

    def cache_key(self, task: Task, seed: int, **extra) -> dict:
        return {"method": self.name, "options": asdict(self), "model": task.model_id,
                "weights": task.weights_id, "seed": seed, **extra}


@dataclass
class PSAQViT(PSAQOptions, Method):
    """PSAQ-ViT V1. Needs the classifier for its random-label prior, so it is not label-free."""

    steps: int = 500
    jitter: tuple[int, ...] = (15, 30)
    ce_weight: float = 1.0

    name = "psaq-vit"
    label_free = False

    def generate(self, task: Task, net: nn.Module, seed: int) -> torch.Tensor:
        spec = task.input_spec
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(task.num_classes, (self.n,), generator=gen).to(task.device)
        tv_goal = self.tv_prior().goal((self.n, *spec.shape), gen)
        config = self.generation(net, tuple((self.steps, j) for j in self.jitter))
        with MHSACapture(net) as capture:
            def loss_fn(x: torch.Tensor) -> torch.Tensor:
                capture.clear()
                out = net(x)
                return self.prior_loss(x, capture, tv_goal) + self.ce_weight * F.cross_entropy(out, labels)
            return optimise_images(noise(spec, self.n, seed, task.device), loss_fn, spec, config, seed, self.name)

    def quantize_backbone(self, task: Task, net: nn.Module, config: QuantConfig, seed: int) -> tuple[nn.Module, dict]:
        images, path = cached_images(self.cache_key(task, seed), lambda: self.generate(task, net, seed),
                                     task.input_spec)
        images = images.to(task.device)
        return ptq(net, config, images), {
            "calibration": f"{self.name}:{self.n}", "n_calib": self.n, "images": str(path),
            "image_steps": self.steps * len(self.jitter), "image_stats": image_stats(images, task.input_spec)}
