"""Image classification with timm models: ImageNet at paper scale, Fashion-MNIST for the micro
models and the pretrained tier."""
from __future__ import annotations

import hashlib
import itertools
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.utils import accuracy
from torch import nn
from tqdm import tqdm

import tasks.micro.models as zoo
import tasks.pretrained.models as pretrained
from clamp.io import file_sha256
from clamp.task import RANDOM_WEIGHTS, InputSpec, fixed_init
from tasks.fake_data import random_image
from tasks.micro import fashion_mnist
from tasks.weights import WeightFile, hub_file

IMAGENET_ENV = "CLAMP_IMAGENET"
PAPER_MODELS = (
    "deit_tiny_patch16_224.fb_in1k", "deit_small_patch16_224.fb_in1k", "deit_base_patch16_224.fb_in1k",
    "vit_small_patch16_224.augreg_in21k_ft_in1k", "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "swin_tiny_patch4_window7_224.ms_in1k", "swin_small_patch4_window7_224.ms_in1k",
)


def _subset(n_total: int, n: int | None, seed: int) -> torch.Tensor:
    """A fixed random subset (ImageNet folders are sorted by class, so a prefix would be biased)."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


class ClassificationTask:
    """timm classifier by pretrained tag (or a micro or pretrained-tier model), evaluated by top-1/top-5."""

    name = "classification"
    metric = "top1"
    quant_exclude: tuple[str, ...] = ()  # the classifier head is quantized like the backbone
    micro_models = (*zoo.MICRO_MODELS, *pretrained.PRETRAINED_MODELS)  # their weights ship with the repo
    paper_models = PAPER_MODELS
    smoke_subset = ("deit_tiny_patch16_224.fb_in1k", ("real", "gaussian", "psaq-vit", "psaq-vit-v2", "clamp-vit"))

    def __init__(self, model_id: str, *, data_root: str | None = None, checkpoint: str | None = None,
                 device: str | torch.device = "cpu", n_eval: int | None = None, batch_size: int = 250,
                 workers: int = 4) -> None:
        if not timm.is_model(model_id.split(".")[0]):
            raise ValueError(f"unknown model {model_id!r}: use a timm tag such as {PAPER_MODELS[0]}, a micro "
                             f"model ({', '.join(zoo.MICRO_MODELS)}) or {pretrained.NAME}")
        self.model_id, self.checkpoint = model_id, checkpoint
        self.device, self.n_eval, self.batch_size, self.workers = torch.device(device), n_eval, batch_size, workers
        base = model_id.split(".")[0]
        self.micro = base in zoo.MICRO_MODELS
        self.fmnist = self.micro or base in pretrained.PRETRAINED_MODELS  # evaluated on Fashion-MNIST
        self.data_root = None if self.fmnist else self._imagenet_root(data_root)
        self._model: nn.Module | None = None

    def check_data(self) -> None:
        """Fail with one line if the evaluation or calibration data cannot be read."""
        if self.fmnist:
            fashion_mnist.check()

    @staticmethod
    def _imagenet_root(data_root: str | None) -> Path:
        root = data_root or os.environ.get(IMAGENET_ENV)
        if not root or not (Path(root) / "val").is_dir():
            raise FileNotFoundError(f"ImageNet not found at {root!r}: pass --data-root or set {IMAGENET_ENV} "
                                    "to a folder with train/ and val/ class subfolders")
        return Path(root)

    def build_model(self) -> nn.Module:
        """The FP model with its pretrained weights: the micro checkpoint, a checkpoint file, the
        Hugging Face cache (downloaded first when online), or none (``random``)."""
        if self._model is None:
            overlay, pretrained = None, self.checkpoint != RANDOM_WEIGHTS
            if self.checkpoint and pretrained:
                if not Path(self.checkpoint).is_file():
                    raise FileNotFoundError(f"checkpoint {self.checkpoint} does not exist: pass an existing file")
                overlay = {"file": self.checkpoint}
            elif not self.checkpoint and not self.fmnist:
                overlay = {"file": str(self.weight_file(self.model_id).fetch())}
            try:
                with fixed_init():
                    model = timm.create_model(self.model_id, pretrained=pretrained, pretrained_cfg_overlay=overlay)
            except Exception as err:  # corrupt or mismatched weights of any format
                raise RuntimeError(f"cannot load weights for {self.model_id} ({err}): "
                                   "pass a matching --checkpoint") from err
            self._model = model.eval().requires_grad_(False).to(self.device)  # PTQ never trains weights
        return self._model

    @cached_property
    def weights_id(self) -> str:
        """sha256 of the weight files (micro checkpoint, --checkpoint, the pretrained tier's backbone
        and head, or the HF cache's file)."""
        if self.checkpoint == RANDOM_WEIGHTS:
            return RANDOM_WEIGHTS
        if self.checkpoint:
            paths = [self.checkpoint]
        elif self.micro:
            paths = [zoo.checkpoint_path(self.model_id.split(".")[0])]
        elif self.fmnist:
            paths = pretrained.weight_files()
        else:
            paths = [self.weight_file(self.model_id).fetch()]
        digests = [file_sha256(path) for path in paths]
        combined = digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
        return combined[:16]

    @staticmethod
    def eval_size(model_id: str) -> int | None:
        """Images in the whole evaluation split of ``model_id`` where the repo fixes it (the
        Fashion-MNIST test split), else None (a user's ImageNet)."""
        base = model_id.split(".")[0]
        return fashion_mnist.TEST_SIZE if base in zoo.MICRO_MODELS or base in pretrained.PRETRAINED_MODELS else None

    @staticmethod
    def weight_file(model_id: str) -> WeightFile | None:
        """The published weights of a timm tag on the Hugging Face hub (None: they ship with the repo)."""
        base = model_id.split(".")[0]
        if base in zoo.MICRO_MODELS or base in pretrained.PRETRAINED_MODELS:
            return None
        cfg = timm.models.get_pretrained_cfg(model_id)
        if cfg is None or not cfg.hf_hub_id:
            raise ValueError(f"{model_id} has no published weights on the Hugging Face hub in timm: use a tag "
                             f"such as {PAPER_MODELS[0]} or pass --checkpoint PATH")
        return hub_file(model_id, cfg.hf_hub_id)

    @staticmethod
    def fake_dataset(root: Path, rng: np.random.Generator, classes: int = 2, per_class: int = 2) -> Path:
        """train/ and val/ with one folder per class (WordNet ids), 500x375 JPEGs as in ImageNet."""
        for split in ("train", "val"):
            for c in range(classes):
                for i in range(per_class):
                    random_image(root / split / f"n{c:08d}" / f"{split}_{c}_{i}.JPEG", (500, 375), rng)
        return root

    @property
    def data_config(self) -> dict:
        return resolve_data_config(model=self.build_model())

    @property
    def input_spec(self) -> InputSpec:
        cfg = self.data_config
        return InputSpec(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]))

    @property
    def num_classes(self) -> int:
        return self.build_model().num_classes

    def backbone(self, model: nn.Module) -> nn.Module:
        return model

    def replace_backbone(self, model: nn.Module, net: nn.Module) -> nn.Module:
        return net

    def output_loss(self, fp_out: torch.Tensor, q_out: torch.Tensor) -> torch.Tensor:
        """KL(FP || quantized) of the class distributions."""
        return F.kl_div(F.log_softmax(q_out, -1), F.log_softmax(fp_out, -1), log_target=True, reduction="batchmean")

    def _batches(self, split: str, n: int | None, seed: int, shard: tuple[int, int] = (0, 1)):
        """(images, labels) batches of a split in the model's own eval preprocessing; ``shard``
        (rank, world size) keeps every world-th image for distributed evaluation."""
        rank, world = shard
        if self.fmnist:
            images, labels = fashion_mnist.load_split(split)
            idx = _subset(len(images), n, seed)[rank::world]
            spec = self.input_spec
            for i in range(0, len(idx), self.batch_size):
                j = idx[i:i + self.batch_size]
                yield fashion_mnist.to_model_input(images[j], spec.shape[-1], spec.mean, spec.std), labels[j]
            return
        folder = self.data_root / ("val" if split == "test" else "train")
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist: ImageNet needs train/ and val/ class subfolders")
        dataset = create_dataset("", root=str(folder), transform=create_transform(**self.data_config))
        subset = torch.utils.data.Subset(dataset, _subset(len(dataset), n, seed)[rank::world].tolist())
        yield from torch.utils.data.DataLoader(subset, batch_size=self.batch_size, num_workers=self.workers)

    def real_images(self, n: int, seed: int) -> torch.Tensor:
        """``n`` random training images (the real-data oracle's calibration set)."""
        return torch.cat([x for x, _ in self._batches("train", n, seed)])[:n].to(self.device)

    def test_images(self, n: int) -> torch.Tensor:
        """The first ``n`` images of the evaluation subset (exports trace and time on them)."""
        batches = self._batches("test", self.n_eval, seed=0)
        return torch.cat([x for x, _ in itertools.islice(batches, -(-n // self.batch_size))])[:n]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """top-1 / top-5 (percent) on the validation split with timm's ``accuracy``. Under
        torch.distributed (torchrun) every rank evaluates a shard and the counts are summed."""
        model.eval()
        shard = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        counts = torch.zeros(3, dtype=torch.float64)  # correct top-1, correct top-5, images
        total = self.n_eval or self.eval_size(self.model_id) or 50000
        with tqdm(total=total // shard[1], desc=f"eval {self.model_id}", unit="img", leave=False,
                  disable=None) as bar:
            for x, y in self._batches("test", self.n_eval, seed=0, shard=shard):
                out = model(x.to(self.device))
                acc1, acc5 = accuracy(out, y.to(self.device), topk=(1, min(5, out.shape[-1])))
                counts += torch.tensor([acc1.item(), acc5.item(), 100.0]) * x.shape[0] / 100
                bar.update(x.shape[0])
        if dist.is_initialized():
            dist.all_reduce(counts)
        correct1, correct5, n = counts.round().tolist()
        return {"top1": 100 * correct1 / n, "top5": 100 * correct5 / n, "n_eval": int(n)}
