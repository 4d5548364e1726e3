"""Image and patch priors for synthetic data: total variation and PSAQ-ViT's patch similarity."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clamp.generate.features import MHSAOutput


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """L2 total variation over the batch (DeepInversion's ``loss_var_l2``): the sum of the norms
    of the differences to the right, down and both diagonal neighbours."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return d1.norm() + d2.norm() + d3.norm() + d4.norm()


def tv_scale(batch: int, height: int, width: int) -> float:
    """How a TV target set for batch 32 at 224x224 scales: the L2 norm grows with the square
    root of the number of pixels."""
    return math.sqrt(batch * height * width / (32 * 224 * 224))


def kde_entropy(values: torch.Tensor, bandwidth: float = 0.01, points: int = 10) -> torch.Tensor:
    """Differential entropy of each row's distribution, from a Gaussian kernel density estimate
    evaluated on ``points`` evenly spaced points between the row's min and max (trapezoid rule).

    values: (..., n) -> entropy: (...). Differentiable in ``values``.
    """
    lo = values.min(dim=-1, keepdim=True).values.detach()
    hi = values.max(dim=-1, keepdim=True).values.detach()
    t = lo + (hi - lo) * torch.linspace(0, 1, points, device=values.device)  # (..., points)
    z = (t.unsqueeze(-1) - values.unsqueeze(-2)) / bandwidth  # (..., points, n)
    density = torch.exp(-0.5 * z.pow(2)).mean(-1) / (bandwidth * math.sqrt(2 * math.pi))
    integrand = -density * torch.log(density.clamp_min(1e-12))
    dt = (hi - lo).squeeze(-1) / (points - 1)
    return dt * (integrand[..., 1:] + integrand[..., :-1]).sum(-1) / 2


def patch_similarity(out: MHSAOutput) -> torch.Tensor:
    """PSAQ-ViT's patch similarity: pairwise cosine similarity of the patch tokens of the attn·v
    output, per head, averaged over heads. (B', N, C) -> (B', N, N)."""
    heads = F.normalize(out.heads(), dim=-1)
    return (heads @ heads.transpose(-2, -1)).mean(1)


def patch_similarity_entropy(outputs: list[MHSAOutput], bandwidth: float = 0.01, points: int = 10) -> torch.Tensor:
    """Sum over blocks of the mean (over images or windows) differential entropy of the
    patch-similarity distribution. PSAQ-ViT maximises it: diverse patches look like real images."""
    total = 0.0
    for out in outputs:
        sim = patch_similarity(out)
        total = total + kde_entropy(sim.flatten(1), bandwidth, points).mean()
    return total


@dataclass
class TVPrior:
    """weight x |TV(x) - v|, v ~ U(target) drawn once per batch (PSAQ-ViT's image prior). The
    target is set for batch 32 at 224 px and scales with the input unless ``scale_to_input`` is off."""

    weight: float = 0.05
    target: tuple[float, float] = (2500.0, 3000.0)
    scale_to_input: bool = True

    def goal(self, shape: tuple[int, ...], gen: torch.Generator) -> float:
        lo, hi = self.target
        v = lo + (hi - lo) * torch.rand((), generator=gen).item()
        return v * tv_scale(shape[0], shape[-2], shape[-1]) if self.scale_to_input else v

    def __call__(self, x: torch.Tensor, goal: float) -> torch.Tensor:
        return self.weight * (total_variation(x) - goal).abs()
