"""Fashion-MNIST from IDX files: the Debian package, any folder of the standard files, or
torchvision's download when online. Images are resized and replicated to RGB for the micro ViTs."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "CLAMP_FASHION_MNIST"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
TEST_SIZE = 10000  # images in the test split, the micro and pretrained tiers' evaluation set
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
MEAN, STD = (0.2860,) * 3, (0.3530,) * 3


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        for sub in ("", "raw", "FashionMNIST/raw"):
            if (root / sub / name).is_file():
                return root / sub / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError):  # a truncated or corrupt gzip stream
        data = b""
    ndim = data[3] if len(data) > 4 and data[:3] == b"\x00\x00\x08" else 0
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if not ndim or len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise ValueError(f"Fashion-MNIST file {path} is truncated or not an IDX file: reinstall it "
                         "(`apt-get install --reinstall dataset-fashion-mnist`)")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the IDX files: ``root``, then $CLAMP_FASHION_MNIST, then Debian's path."""
    candidates = [Path(root)] if root else [Path(p) for p in (os.environ.get(ENV_VAR),) if p] + [DEBIAN_ROOT]
    for c in candidates:
        if _find(c, FILES["test"][0]):
            return c
    where = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"Fashion-MNIST not found in {where}: `apt-get install dataset-fashion-mnist`, "
                            f"or set {ENV_VAR} to a folder with the IDX files")


def load_split(split: str, root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the ``train`` or ``test`` split."""
    base = resolve_root(root)
    img_file, lbl_file = (_find(base, stem) for stem in FILES[split])
    if img_file is None or lbl_file is None:
        raise FileNotFoundError(f"Fashion-MNIST {split} split incomplete in {base}: reinstall the IDX files")
    images = torch.from_numpy(_read_idx(img_file).copy())
    labels = torch.from_numpy(_read_idx(lbl_file).astype(np.int64))
    return images, labels


def check(root: str | os.PathLike | None = None) -> None:
    """Both splits present and readable, or one line saying what to install."""
    for split in FILES:
        load_split(split, root)


def to_model_input(images: torch.Tensor, size: int, mean=MEAN, std=STD) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalised float [N, 3, size, size] (bilinear resize, grey to RGB)."""
    x = images.float().div(255).unsqueeze(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
