"""What a method needs from a task: the interface every task adapter implements.

Defined here, in the core, so that methods depend on the interface and never on a task.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

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
    whole classifier, or the backbone of a detector/segmentor.

    A task is one module registered under the entry point group ``clamp_vit_bench.tasks``
    (README: adding a task). Class-level members serve the harness before any model is built:
    the CLI lists ``micro_models`` and ``paper_models``, sizes cells by ``eval_size``, fetches
    ``weight_file``; the paper-scale smoke test runs ``smoke_subset`` on ``fake_dataset``."""

    name: str
    metric: str  # the headline metric of ``evaluate`` (top1, bbox_mAP, mIoU, ...)
    micro_models: tuple[str, ...]  # models whose weights ship with the repo (micro and pretrained tiers)
    paper_models: tuple[str, ...]  # the papers' models (published weights)
    smoke_subset: tuple[str, tuple[str, ...]]  # (model, methods) the smoke test's CI subset runs
    model_id: str
    weights_id: str  # fingerprint of the FP weights: caches of generated data and metrics key on it
    device: torch.device
    input_spec: InputSpec
    num_classes: int | None  # classes for the generation prior; None: label-free task
    quant_exclude: tuple[str, ...]  # module names of ``net`` left in FP

    def __init__(self, model_id: str, *, n_eval: int | None = None, device: str | torch.device = "cpu",
                 **options: object) -> None: ...  # unknown models and missing data: one-line errors here

    @staticmethod
    def eval_size(model_id: str) -> int | None: ...  # images of the fixed evaluation split, None: a user's data

    @staticmethod
    def weight_file(model_id: str) -> object | None: ...  # tasks.weights.WeightFile, None: in the repo

    @staticmethod
    def fake_dataset(root: Path, rng: object) -> Path: ...  # a few random images in the real data layout

    def build_model(self) -> nn.Module: ...

    def check_data(self) -> None: ...  # one-line error if the data cannot be read

    def backbone(self, model: nn.Module) -> nn.Module: ...

    def replace_backbone(self, model: nn.Module, net: nn.Module) -> nn.Module: ...

    def real_images(self, n: int, seed: int) -> torch.Tensor: ...

    def output_loss(self, fp_out: object, q_out: object) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
