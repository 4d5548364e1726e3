"""CLAMP-ViT's patch-level contrastive losses (InfoNCE over cosine similarities of patch tokens)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _offsets(radius: int) -> list[tuple[int, int]]:
    """(dy, dx) of a (2r+1)x(2r+1) neighbourhood, the centre excluded, in row-major order."""
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if dy or dx]


def neighbours(h: int, w: int, radius: int = 1,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(index, valid), both (h*w, (2r+1)^2 - 1): the patches in each patch's (2r+1)x(2r+1)
    spatial neighbourhood, itself excluded; ``valid`` is False where it leaves the grid."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.reshape(-1, 1), xs.reshape(-1, 1)
    dy, dx = (torch.tensor(v, device=device).view(1, -1) for v in zip(*_offsets(radius), strict=True))
    ny, nx = ys + dy, xs + dx
    valid = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    return ny.clamp(0, h - 1) * w + nx.clamp(0, w - 1), valid


def neighbour_similarities(tokens: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """(B, H*W, K): each patch's dot product with its K = (2r+1)^2 - 1 neighbours, in the order of
    ``neighbours`` (0 where a neighbour leaves the grid), from unit tokens (B, H, W, C). Each
    offset o of the first half is one product of the grid with its shifted copy (no gathered
    (B, P, K, C) tensor, whose backward, a scatter-add, was a quarter of a CPU generation step);
    the mirrored offset -o is the same (B, H, W) map shifted, since sim(p, p + o) = sim(p + o, p)."""
    b, h, w, _ = tokens.shape
    r = radius
    padded = F.pad(tokens, (0, 0, r, r, r, r))
    offsets = _offsets(r)
    half = {o: (tokens * padded[:, r + o[0]:r + o[0] + h, r + o[1]:r + o[1] + w]).sum(-1)
            for o in offsets[len(offsets) // 2:]}  # the offsets after the centre
    for (dy, dx), sim in list(half.items()):
        half[(-dy, -dx)] = F.pad(sim, (r, r, r, r))[:, r - dy:r - dy + h, r - dx:r - dx + w]
    return torch.stack([half[o] for o in offsets], -1).reshape(b, h * w, -1)


def select_positives(near_sim: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Of each anchor's neighbours (similarities ``near_sim`` (B, P, K)), the ``k`` most similar:
    (positions in K, validity; fewer at borders where the neighbourhood is smaller). Chosen
    without gradient."""
    k = min(k, int(valid.sum(-1).max()))
    top = near_sim.detach().masked_fill(~valid, float("-inf")).topk(k, dim=-1).indices
    return top, valid.expand_as(near_sim).gather(-1, top)


NEGATIVES = ("neighbourhood", "image")
CHUNK = 1024  # anchors per chunk of the image-wide forms: memory O(B x CHUNK x P), never O(B x P x P)


def patch_contrastive_loss(grid: torch.Tensor, tau: float = 0.1, k: int = 4, radius: int = 1,
                           negatives: str = "neighbourhood") -> torch.Tensor:
    """Stage 1 loss on one block's MHSA output grid (B, H, W, C). The positives of an anchor
    patch are its top-k most similar patches (chosen without gradient) in its (2r+1)^2
    neighbourhood; its negatives are the other patches of that neighbourhood
    (``neighbourhood``, the paper's reading: positives and negatives are identified within the
    neighbourhood) or every other patch of the image (``image``). InfoNCE, mean over anchors:
    -log(sum_pos exp(sim/tau) / sum_candidates exp(sim/tau)). The neighbourhood form is O(P);
    the image form runs over chunks of anchors, each recomputed in the backward pass, so the
    (B, P, P) similarity matrix never exists."""
    if negatives not in NEGATIVES:
        raise ValueError(f"unknown negatives {negatives!r}: use {' or '.join(NEGATIVES)}")
    b, h, w, c = grid.shape
    unit = F.normalize(grid, dim=-1)
    tokens = unit.reshape(b, h * w, c)
    _, valid = neighbours(h, w, radius, grid.device)
    near = neighbour_similarities(unit, radius) / tau  # (B, P, K) neighbour logits
    top, top_valid = select_positives(near, valid, k)
    numer = torch.logsumexp(near.gather(-1, top).masked_fill(~top_valid, float("-inf")), dim=-1)
    if negatives == "neighbourhood":
        denom = torch.logsumexp(near.masked_fill(~valid, float("-inf")), dim=-1)
    else:
        denom = torch.cat([checkpoint(_others_logsumexp, tokens, start, tau, use_reentrant=False)
                           for start in range(0, h * w, CHUNK)], dim=1)
    return (denom - numer).mean()


def _others_logsumexp(tokens: torch.Tensor, start: int, tau: float) -> torch.Tensor:
    """logsumexp over every other patch of the image, for anchors start..start+CHUNK: (B, chunk)."""
    anchors = tokens[:, start:start + CHUNK]
    logits = anchors @ tokens.transpose(1, 2) / tau
    rows = torch.arange(anchors.shape[1], device=tokens.device)
    logits[:, rows, rows + start] = float("-inf")
    return torch.logsumexp(logits, dim=-1)


def local_contrastive_loss(q_grid: torch.Tensor, fp_grid: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Stage 2 fitness L_C: each quantized patch's positive is the same patch of the FP block
    output; the other FP patches of that image are its negatives. Grids (B, ..., C). Computed
    over chunks of anchors (without gradient, the fitness needs none), O(B x CHUNK x P) memory."""
    b, c = q_grid.shape[0], q_grid.shape[-1]
    q = F.normalize(q_grid.reshape(b, -1, c), dim=-1)
    fp = F.normalize(fp_grid.reshape(b, -1, c), dim=-1)
    total = q.new_zeros(())
    for start in range(0, q.shape[1], CHUNK):
        logits = q[:, start:start + CHUNK] @ fp.transpose(1, 2) / tau
        rows = torch.arange(logits.shape[1], device=q.device)
        total = total + (torch.logsumexp(logits, -1) - logits[:, rows, rows + start]).sum()
    return total / (b * q.shape[1])


def image_contrastive_loss(q_out: torch.Tensor, fp_out: torch.Tensor, tau: float = 3.0) -> torch.Tensor:
    """Evol-Q's global term (enyac-group/evol-q ``utils.py::contrastive_loss``, run with T = 3 in its
    ``scripts/run.sh``): InfoNCE ACROSS IMAGES on the outputs (B, D): each quantized output's
    positive is its own image's FP output, the other images' FP outputs are its negatives, on
    cosine similarities over ``tau``; scaled by 2 tau as there."""
    logits = F.normalize(q_out, dim=1) @ F.normalize(fp_out, dim=1).T / tau
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device)) * (2 * tau)


LO_MAX_SIDE = 32  # L_O's largest map side: bigger dense maps are average-pooled to it (ours, not the paper's)


def _lo_side(shape: torch.Size, max_side: int) -> tuple[int, int]:
    return min(shape[-2], max_side), min(shape[-1], max_side)


def feature_contrastive_loss(fp_feats: tuple[torch.Tensor, ...], q_feats: tuple[torch.Tensor, ...],
                             tau: float = 0.1, max_side: int = LO_MAX_SIDE) -> torch.Tensor:
    """L_O of a dense-task backbone: the local patch contrastive loss (each quantized location's
    positive is the same FP location) on every output feature map (B, C, H, W), averaged.
    Maps larger than ``max_side`` are average-pooled first: the loss is exact per anchor chunk in
    memory, but its time and, in the refinement's backward, its stored logits grow with the square
    of the locations (a 128x128 map at 512 px would keep 1 GiB per image)."""
    losses = []
    for fp, q in zip(fp_feats, q_feats, strict=True):
        side = _lo_side(fp.shape, max_side)
        if side != tuple(fp.shape[-2:]):
            fp, q = F.adaptive_avg_pool2d(fp, side), F.adaptive_avg_pool2d(q, side)
        losses.append(local_contrastive_loss(q.permute(0, 2, 3, 1), fp.permute(0, 2, 3, 1), tau))
    return torch.stack(losses).mean()


def feature_lo_maps(feats: tuple[torch.Tensor, ...], max_side: int = LO_MAX_SIDE) -> str:
    """The maps L_O compares, for the row: '128x128->32x32 64x64->32x32 32x32 16x16' (-> where pooled)."""
    def size(hw: tuple[int, int]) -> str:
        return f"{hw[0]}x{hw[1]}"
    parts = []
    for f in feats:
        hw, side = tuple(f.shape[-2:]), _lo_side(f.shape, max_side)
        parts.append(size(hw) + (f"->{size(side)}" if side != hw else ""))
    return " ".join(parts)
