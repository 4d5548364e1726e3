"""Does the search's fitness track accuracy? Its children scored after the fact on held-out images.

For every child of the search: the change of its fitness against its parent's (what the search
decides on) and the change of a held-out loss (the task's output loss on real training images the
method never sees, given by the harness; nothing the method decides depends on it). Their rank
correlation over all children is the alignment: near +1 the fitness is a good proxy, near 0 the
search moves at random as far as held-out images can tell.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

HeldOut = Callable[[nn.Module], float]  # the quantized net -> its loss on held-out images


def rank_correlation(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (ties ranked in order of appearance); None below 3 pairs or
    when either side is constant."""
    if len(a) < 3:
        return None
    ranks = [torch.argsort(torch.argsort(torch.tensor(v, dtype=torch.float64), stable=True)).double() for v in (a, b)]
    ra, rb = (r - r.mean() for r in ranks)
    denom = (ra.norm() * rb.norm()).item()
    if len(set(a)) < 2 or len(set(b)) < 2 or denom == 0:
        return None
    return float((ra @ rb).item() / denom)
