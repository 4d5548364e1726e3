"""PSAQ-ViT V2 (TNNLS 2023): patch-similarity prior without labels plus an adaptive
teacher-student loop. There is no public code; these are the choices made here, each an option:

1. Warm start: ``steps`` Adam steps of label-free PSAQ-ViT generation (patch-similarity entropy
   and the TV prior, no cross-entropy), one round at jitter ``jitter`` (scaled to the input).
2. Student: the quantized network, min-max calibrated on the warm-start images.
3. ``rounds`` alternations of
   (a) ``image_steps`` image updates minimising  prior - ``adv_weight`` x L_O(teacher, student):
       the images move to where the FP teacher and the quantized student disagree most;
   (b) ``student_steps`` Adam steps (lr ``student_lr``) on one log-multiplier per quantizer scale,
       minimising L_O(teacher, student) on those images (the student's weights stay frozen: PTQ).
   L_O is the task's output loss: KL of logits for classification, a contrastive loss on the
   backbone features for detection and segmentation. No labels anywhere: it runs on a bare backbone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines.psaq import PSAQOptions
from clamp.generate.cache import cached_images
from clamp.generate.features import MHSACapture
from clamp.generate.loop import image_stats, noise, optimise_images
from clamp.quant import QuantConfig, calibrate, quantize_model, quantizers
from clamp.registry import Method
from clamp.task import Task


def fit_scales(student: nn.Module, teacher: nn.Module, images: torch.Tensor, loss_fn, steps: int, lr: float,
               batch: int = 32) -> list[float]:
    """Learn a multiplier exp(p) on every active quantizer's scale by gradient descent on
    ``loss_fn(teacher(x), student(x))``; returns the loss per step."""
    qs = [q for q in quantizers(student) if q.active]
    params = [torch.zeros((), device=images.device, requires_grad=True) for _ in qs]
    start = [q.mult for q in qs]
    opt = torch.optim.Adam(params, lr=lr)
    with torch.no_grad():
        targets = [teacher(x) for x in images.split(batch)]
    losses = []
    for step in range(steps):
        x, target = images.split(batch)[step % len(targets)], targets[step % len(targets)]
        for q, p, m in zip(qs, params, start, strict=True):
            q.set_mult(m * p.exp())
        loss = loss_fn(target, student(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for q, p, m in zip(qs, params, start, strict=True):
        q.set_mult(m * p.exp().item())
    return losses


@dataclass
class PSAQViTV2(PSAQOptions, Method):
    steps: int = 500
    jitter: int = 30
    rounds: int = 4
    image_steps: int = 50
    student_steps: int = 50
    adv_weight: float = 1.0
    student_lr: float = 0.01

    name = "psaq-vit-v2"

    def warm_start(self, task: Task, net: nn.Module, seed: int) -> torch.Tensor:
        spec = task.input_spec
        tv_goal = self.tv_prior().goal((self.n, *spec.shape), torch.Generator().manual_seed(seed))
        with MHSACapture(net) as capture:
            def loss_fn(x: torch.Tensor) -> torch.Tensor:
                capture.clear()
                net(x)
                return self.prior_loss(x, capture, tv_goal)
            return optimise_images(noise(spec, self.n, seed, task.device), loss_fn, spec,
                                   self.generation(net, ((self.steps, self.jitter),)), seed, self.name)

    def adapt_images(self, task: Task, net: nn.Module, qnet: nn.Module, images: torch.Tensor,
                     seed: int) -> torch.Tensor:
        """Step (a): move the images toward FP/quantized disagreement, under the prior."""
        spec = task.input_spec
        tv_goal = self.tv_prior().goal(images.shape, torch.Generator().manual_seed(seed))
        with MHSACapture(net) as capture:
            def loss_fn(x: torch.Tensor) -> torch.Tensor:
                capture.clear()
                fp_out = net(x)
                return self.prior_loss(x, capture, tv_goal) - self.adv_weight * task.output_loss(fp_out, qnet(x))
            return optimise_images(images, loss_fn, spec, self.generation(net, ((self.image_steps, self.jitter),)),
                                   seed, "adapt")

    def quantize_backbone(self, task: Task, net: nn.Module, config: QuantConfig, seed: int) -> tuple[nn.Module, dict]:
        key = self.cache_key(task, seed, stage="warm-start")
        images, path = cached_images(key, lambda: self.warm_start(task, net, seed), task.input_spec)
        images = images.to(task.device)
        qnet = calibrate(quantize_model(net, config), images.split(32))
        fit_loss = []
        for r in range(self.rounds):
            images = self.adapt_images(task, net, qnet, images, seed + 1000 * (r + 1))
            fit_loss += fit_scales(qnet, net, images, task.output_loss, self.student_steps, self.student_lr)
        _, final_path = cached_images({**key, "stage": "adapted", "quant": config.to_dict()},
                                      lambda: images, task.input_spec)
        return qnet, {
            "calibration": f"{self.name}:{self.n}", "n_calib": self.n, "images": str(final_path),
            "warm_start_images": str(path), "image_steps": self.steps + self.rounds * self.image_steps,
            "image_stats": image_stats(images, task.input_spec),
            "student_loss": [round(fit_loss[0], 4), round(fit_loss[-1], 4)] if fit_loss else []}
