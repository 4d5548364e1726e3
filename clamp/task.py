"""What a method needs from a task: the interface every task adapter implements.

Defined here, in the core, so that methods depend on the interface and never on a task.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from clamp.generate.contrastive import local_contrastive_loss

RANDOM_WEIGHTS = "random"  # a checkpoint value: the architecture at its random init (smoke runs, no download)


@contextmanager
def fixed_init() -> Iterator[None]:
    """Build models in here: the same random init every time, so that ``random`` names one set of
    weights; the caller's RNG state is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


@dataclass(frozen=True)
class InputSpec:
    """Synthetic images live in the model's normalised input space: shape (C, H, W), the
    normalisation, and from it the valid range of every channel (pixels in [0, 1])."""

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def bounds(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return (0 - mean) / std, (1 - mean) / std


class Task(Protocol):
    """A model family, its data and its metric. ``net`` below is what methods quantize: the
    whole classifier, or the backbone of a detector/segmentor."""

    name: str
    metric: str  # the headline metric of ``evaluate`` (top1, bbox_mAP, mIoU, ...)
    model_id: str
    weights_id: str  # fingerprint of the FP weights: caches of generated data and metrics key on it
    device: torch.device
    input_spec: InputSpec
    num_classes: int | None  # classes for the generation prior; None: label-free task
    quant_exclude: tuple[str, ...]  # module names of ``net`` left in FP

    def build_model(self) -> nn.Module: ...

    def check_data(self) -> None: ...  # one-line error if the data cannot be read

    def backbone(self, model: nn.Module) -> nn.Module: ...

    def replace_backbone(self, model: nn.Module, net: nn.Module) -> nn.Module: ...

    def real_images(self, n: int, seed: int) -> torch.Tensor: ...

    def output_loss(self, fp_out: object, q_out: object) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


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
