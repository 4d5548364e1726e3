"""CLAMP-ViT's patch-level contrastive losses (InfoNCE over cosine similarities of patch tokens)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def neighbours(h: int, w: int, radius: int = 1,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(index, valid), both (h*w, (2r+1)^2 - 1): the patches in each patch's (2r+1)x(2r+1)
    spatial neighbourhood, itself excluded; ``valid`` is False where it leaves the grid."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.reshape(-1, 1), xs.reshape(-1, 1)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if dy or dx]
    dy, dx = (torch.tensor(v, device=device).view(1, -1) for v in zip(*offsets, strict=True))
    ny, nx = ys + dy, xs + dx
    valid = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    return ny.clamp(0, h - 1) * w + nx.clamp(0, w - 1), valid


def select_positives(near_sim: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Of each anchor's neighbours (similarities ``near_sim`` (B, P, K)), the ``k`` most similar:
    (positions in K, validity; fewer at borders where the neighbourhood is smaller). Chosen
    without gradient."""
    k = min(k, int(valid.sum(-1).max()))
    top = near_sim.detach().masked_fill(~valid, float("-inf")).topk(k, dim=-1).indices
    return top, valid.expand_as(near_sim).gather(-1, top)


def patch_contrastive_loss(grid: torch.Tensor, tau: float = 0.1, k: int = 4, radius: int = 1) -> torch.Tensor:
    """Stage 1 loss on one block's MHSA output grid (B, H, W, C): positives of an anchor patch
    are its top-k most similar patches in its 3x3 neighbourhood, negatives every other patch of
    the same image. InfoNCE: mean over anchors of -log(sum_pos exp(sim/tau) / sum_{j != i} exp(sim/tau)).
    Positives are gathered from the neighbourhood rather than masked out of the (P, P) matrix:
    the same value at a fraction of the cost on large grids."""
    b, h, w, c = grid.shape
    tokens = F.normalize(grid.reshape(b, h * w, c), dim=-1)
    logits = tokens @ tokens.transpose(1, 2) / tau
    index, valid = neighbours(h, w, radius, grid.device)
    near = logits.gather(-1, index.expand(b, -1, -1))
    top, top_valid = select_positives(near, valid, k)
    numer = torch.logsumexp(near.gather(-1, top).masked_fill(~top_valid, float("-inf")), dim=-1)
    eye = torch.eye(h * w, dtype=torch.bool, device=grid.device)
    denom = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=-1)
    return (denom - numer).mean()


def local_contrastive_loss(q_grid: torch.Tensor, fp_grid: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Stage 2 fitness L_C: each quantized patch's positive is the same patch of the FP block
    output; the other FP patches of that image are its negatives. Grids (B, ..., C)."""
    b, c = q_grid.shape[0], q_grid.shape[-1]
    q = F.normalize(q_grid.reshape(b, -1, c), dim=-1)
    fp = F.normalize(fp_grid.reshape(b, -1, c), dim=-1)
    logits = q @ fp.transpose(1, 2) / tau
    target = torch.arange(logits.shape[1], device=logits.device).expand(b, -1)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())
