"""Micro detection and segmentation data: Fashion-MNIST items pasted on a larger canvas.

Deterministic in (split, n, size, seed): the same canvases give a COCO-format instance set
(boxes and RLE masks from the item pixels) and an ADE20K-style semantic set (per-pixel labels,
0 = background). Both are written under the cache, at a path derived from the generator's
configuration, atomically: a folder appears complete or not at all.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image

from clamp.io import cache_dir, config_key
from tasks.micro import fashion_mnist

SPLITS = {"train": "train", "val": "test"}  # canvas split -> Fashion-MNIST split it draws items from
MASK_THRESHOLD = 0.1  # item pixels above this (of 1.0) belong to the item: the silhouette


@dataclass(frozen=True)
class CanvasSpec:
    size: int = 128
    items: tuple[int, int] = (2, 4)  # items per canvas, inclusive
    scale: tuple[int, int] = (28, 56)  # item side in pixels, inclusive
    n_train: int = 2000
    n_val: int = 300
    seed: int = 0


@dataclass
class Instance:
    label: int  # 0-based Fashion-MNIST class
    mask: np.ndarray  # bool [size, size]


def _place(gen: np.random.Generator, spec: CanvasSpec, boxes: list[tuple[int, int, int, int]]):
    """A random square that overlaps none of ``boxes`` (None after 50 tries: the canvas is full)."""
    for _ in range(50):
        s = int(gen.integers(spec.scale[0], spec.scale[1] + 1))
        x, y = (int(v) for v in gen.integers(0, spec.size - s + 1, size=2))
        if all(x + s <= bx or bx + bs <= x or y + s <= by or by + bs <= y for bx, by, bs, _ in boxes):
            return x, y, s
    return None


def canvases(split: str, spec: CanvasSpec):
    """Yield (image uint8 [size, size], instances) for the ``train`` or ``val`` split."""
    images, labels = fashion_mnist.load_split(SPLITS[split])
    n = spec.n_train if split == "train" else spec.n_val
    gen = np.random.default_rng([spec.seed, 0 if split == "train" else 1])
    for _ in range(n):
        canvas = np.zeros((spec.size, spec.size), dtype=np.float32)
        placed: list[tuple[int, int, int, int]] = []
        instances = []
        for _ in range(int(gen.integers(spec.items[0], spec.items[1] + 1))):
            where = _place(gen, spec, placed)
            if where is None:
                break
            x, y, s = where
            i = int(gen.integers(len(images)))
            item = F.interpolate(images[i].float().div(255)[None, None], size=(s, s), mode="bilinear",
                                 align_corners=False)[0, 0].numpy()
            canvas[y:y + s, x:x + s] = np.maximum(canvas[y:y + s, x:x + s], item)
            mask = np.zeros_like(canvas, dtype=bool)
            mask[y:y + s, x:x + s] = item > MASK_THRESHOLD
            if mask.any():
                placed.append((x, y, s, i))
                instances.append(Instance(int(labels[i]), mask))
        yield (canvas * 255).round().astype(np.uint8), instances


def _coco(split: str, spec: CanvasSpec, image_dir: Path) -> dict:
    from pycocotools import mask as mask_utils

    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(fashion_mnist.CLASSES)]}
    for idx, (image, instances) in enumerate(canvases(split, spec)):
        name = f"{idx:06d}.png"
        Image.fromarray(image).convert("RGB").save(image_dir / name)
        coco["images"].append({"id": idx, "file_name": name, "height": spec.size, "width": spec.size})
        for inst in instances:
            rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": idx, "category_id": inst.label + 1,
                "bbox": [x, y, w, h], "area": float(mask_utils.area(rle)), "iscrowd": 0,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return coco


def _write_detection(root: Path, spec: CanvasSpec) -> None:
    (root / "annotations").mkdir(parents=True)
    for split in SPLITS:
        image_dir = root / split
        image_dir.mkdir()
        coco = _coco(split, spec, image_dir)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def _write_segmentation(root: Path, spec: CanvasSpec) -> None:
    for split, folder in (("train", "training"), ("val", "validation")):
        (root / "images" / folder).mkdir(parents=True)
        (root / "annotations" / folder).mkdir(parents=True)
        for idx, (image, instances) in enumerate(canvases(split, spec)):
            label = np.zeros(image.shape, dtype=np.uint8)
            for inst in instances:
                label[inst.mask] = inst.label + 1  # 0 is the background class
            Image.fromarray(image).convert("RGB").save(root / "images" / folder / f"{idx:06d}.png")
            Image.fromarray(label).save(root / "annotations" / folder / f"{idx:06d}.png")


WRITERS = {"detection": _write_detection, "segmentation": _write_segmentation}


def dataset_root(kind: str, spec: CanvasSpec = CanvasSpec()) -> Path:
    """The generated ``detection`` (COCO) or ``segmentation`` (ADE20K layout) set, built on first use."""
    root = cache_dir("micro") / f"{kind}-{config_key({'kind': kind, **asdict(spec)})}"
    if not root.is_dir():
        tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        WRITERS[kind](tmp, spec)
        (tmp / "spec.json").write_text(json.dumps({"kind": kind, **asdict(spec)}, indent=2))
        try:
            tmp.rename(root)
        except OSError:  # another process finished first: its copy is identical
            shutil.rmtree(tmp)
    return root
