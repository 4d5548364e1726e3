"""CLAMP-ViT's patch-level contrastive losses (InfoNCE over cosine similarities of patch tokens)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def neighbourhood_mask(h: int, w: int, radius: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """(h*w, h*w) bool: j is in the (2r+1)x(2r+1) spatial neighbourhood of i, i itself excluded."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near = ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)
    return near & ~torch.eye(h * w, dtype=torch.bool, device=device)


def select_positives(sim: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """(B, P, P) bool: for each anchor, its ``k`` most similar candidates (fewer at borders where
    the neighbourhood is smaller). Chosen without gradient."""
    masked = sim.detach().masked_fill(~candidates, float("-inf"))
    k = min(k, int(candidates.sum(-1).max()))
    top = masked.topk(k, dim=-1).indices
    pos = torch.zeros_like(masked, dtype=torch.bool).scatter_(-1, top, True)
    return pos & candidates


def info_nce(sim: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor, tau: float) -> torch.Tensor:
    """mean over anchors of -log( sum_pos exp(sim/tau) / sum_valid exp(sim/tau) )."""
    logits = sim / tau
    denom = torch.logsumexp(logits.masked_fill(~valid, float("-inf")), dim=-1)
    numer = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=-1)
    return (denom - numer).mean()


def patch_contrastive_loss(grid: torch.Tensor, tau: float = 0.1, k: int = 4, radius: int = 1) -> torch.Tensor:
    """Stage 1 loss on one block's MHSA output grid (B, H, W, C): positives of an anchor patch
    are its top-k most similar patches in its 3x3 neighbourhood, negatives every other patch of
    the same image."""
    b, h, w, c = grid.shape
    tokens = F.normalize(grid.reshape(b, h * w, c), dim=-1)
    sim = tokens @ tokens.transpose(1, 2)
    eye = torch.eye(h * w, dtype=torch.bool, device=grid.device)
    positives = select_positives(sim, neighbourhood_mask(h, w, radius, grid.device).expand(b, -1, -1), k)
    return info_nce(sim, positives, ~eye.expand(b, -1, -1), tau)


def local_contrastive_loss(q_grid: torch.Tensor, fp_grid: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Stage 2 fitness L_C: each quantized patch's positive is the same patch of the FP block
    output; the other FP patches of that image are its negatives. Grids (B, ..., C)."""
    b, c = q_grid.shape[0], q_grid.shape[-1]
    q = F.normalize(q_grid.reshape(b, -1, c), dim=-1)
    fp = F.normalize(fp_grid.reshape(b, -1, c), dim=-1)
    logits = q @ fp.transpose(1, 2) / tau
    target = torch.arange(logits.shape[1], device=logits.device).expand(b, -1)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())
