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
    """Mean over rows of the differential entropy of each row's distribution, as PSAQ-ViT's
    ``generate_data.py`` computes it: a Gaussian kernel density estimate evaluated on ``points``
    evenly spaced points between the min and max of the WHOLE batch (one grid for every row),
    then -(p + 1e-4) log(p + 1e-4) integrated by the trapezoid rule.

    values: (rows, n) -> scalar. Differentiable in ``values`` (the grid is not).
    """
    lo, hi = values.min().detach(), values.max().detach()
    t = lo + (hi - lo) * torch.linspace(0, 1, points, device=values.device, dtype=values.dtype)  # (points,)
    z = (t[:, None] - values.unsqueeze(-2)) / bandwidth  # (rows, points, n)
    density = torch.exp(-0.5 * z.pow(2)).mean(-1) / (bandwidth * math.sqrt(2 * math.pi)) + 1e-4
    return torch.trapezoid(-density * torch.log(density), t, dim=-1).mean()


def patch_similarity(out: MHSAOutput) -> torch.Tensor:
    """PSAQ-ViT's patch similarity: the attn·v output averaged over heads FIRST, then the pairwise
    cosine similarity of its patch tokens. (B', N, C) -> (B', N', N'); for windowed attention
    (Swin) the first token of every window is dropped, as PSAQ-ViT's ``[:, 1:]`` does there too."""
    heads = out.heads().mean(1)  # (B', N, C / heads)
    if out.windowed:
        heads = heads[:, 1:]
    t = F.normalize(heads, dim=-1)
    return t @ t.transpose(-2, -1)


def patch_similarity_entropy(outputs: list[MHSAOutput], bandwidth: float = 0.01, points: int = 10) -> torch.Tensor:
    """Sum over blocks of the differential entropy of the patch-similarity distribution, one
    estimate per image (a Swin image's windows pooled into one) averaged over the batch.
    PSAQ-ViT maximises it: diverse patches look like real images."""
    total = 0.0
    for out in outputs:
        sim = patch_similarity(out)
        total = total + kde_entropy(sim.reshape(out.grid.shape[0], -1), bandwidth, points)
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
