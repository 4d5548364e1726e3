"""The synthetic-image optimisation loop shared by CLAMP-ViT and the PSAQ-ViT baselines.

Images start as Gaussian noise in normalised space and are optimised with Adam (cosine schedule
with warm-up, restarted every round), with random roll-jitter and horizontal flips at every step,
and clipped to the valid pixel range after every step. As PSAQ-ViT's ``generate_data.py``: one
Adam state across all rounds, and one roll offset for both axes.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from clamp.task import InputSpec

REFERENCE_SIZE = 224  # the input size the published jitter limits were set for


@dataclass
class GenerationConfig:
    """One synthetic batch. ``rounds`` pairs (steps, jitter limit in px at 224 px); the limits
    scale with the input size (H / 224) unless ``scale_jitter`` is off."""

    batch: int = 32
    rounds: tuple[tuple[int, int], ...] = ((500, 15), (500, 30))
    lr: float = 0.2
    betas: tuple[float, float] = (0.5, 0.9)
    warmup: int = 100
    flip: bool = True
    scale_jitter: bool = True

    def jitter(self, limit: int, height: int) -> int:
        return round(limit * height / REFERENCE_SIZE) if self.scale_jitter else limit


def cosine_lr(step: int, steps: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0 (PSAQ-ViT's ``lr_cosine_policy``)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))) * base_lr


def clip_(x: torch.Tensor, spec: InputSpec) -> None:
    lo, hi = spec.bounds(x.device)
    x.data = torch.maximum(torch.minimum(x.data, hi), lo)


def noise(spec: InputSpec, batch: int, seed: int, device: torch.device | str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *spec.shape), generator=gen).to(device)


def optimise_images(x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], spec: InputSpec,
                    config: GenerationConfig, seed: int, desc: str = "generate") -> torch.Tensor:
    """Run every round of ``config`` on the images ``x`` (a copy is optimised and returned)."""
    x = x.detach().clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(seed + 1)
    total = sum(steps for steps, _ in config.rounds)
    opt = torch.optim.Adam([x], lr=config.lr, betas=config.betas)
    with tqdm(total=total, desc=desc, leave=False, disable=None) as bar:
        for steps, limit in config.rounds:
            jitter = config.jitter(limit, spec.shape[-2])
            for step in range(steps):
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(step, steps, config.lr, min(config.warmup, steps // 2))
                off = int(torch.randint(-jitter, jitter + 1, (), generator=gen))
                view = torch.roll(x, shifts=(off, off), dims=(2, 3))
                if config.flip and torch.rand((), generator=gen) < 0.5:
                    view = view.flip(3)
                loss = loss_fn(view)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                clip_(x, spec)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return x.detach()


def image_stats(x: torch.Tensor, spec: InputSpec) -> dict[str, float]:
    """Statistics of a synthetic batch worth recording: per-pixel mean/std and how much of it
    sits on the clip bounds (a sign of a runaway prior)."""
    lo, hi = spec.bounds(x.device)
    at_bound = ((x <= lo + 1e-4) | (x >= hi - 1e-4)).float().mean()
    return {"mean": round(x.mean().item(), 4), "std": round(x.std().item(), 4),
            "at_clip_bound": round(at_bound.item(), 4)}
