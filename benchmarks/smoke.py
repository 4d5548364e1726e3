"""The paper-scale smoke test: every paper model at paper resolution, with random weights, on
tiny generated datasets in the real ImageNet / COCO / ADE20K layouts, every method at the
smallest budgets it accepts, W4/A8 and one mixed-precision cell per model. It proves the paper
path runs end to end (data loading, the frameworks' evaluators, every method, every backbone)
before a GPU machine spends hours on it; its numbers mean nothing and go to a temporary folder.

    python -m benchmarks.smoke [--ci] [--device cuda] [--keep DIR]    # tox -e paper-smoke

``--ci`` runs the subset tests/test_paper_smoke.py runs on every commit, at W4/A8: every method
on DeiT-T; real data and Gaussian noise (the frameworks' data pipelines and evaluators) on Mask
R-CNN Swin-T and UperNet DeiT-S. The generation methods on those backbones take minutes each on
CPU even at their smallest budgets (every fitness evaluation is a forward at 512 px); they run in
the whole smoke suite, and at micro scale in the tests.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import suites
from benchmarks.runner import RunOptions, run_cells, with_weights
from benchmarks.store import ResultStore

SUITES = {"classification": "paper-smoke-classification", "detection": "paper-smoke-detection",
          "segmentation": "paper-smoke-segmentation"}
CI = {"classification": ("deit_tiny_patch16_224.fb_in1k", {"real", "gaussian", "psaq-vit", "psaq-vit-v2", "clamp-vit"}),
      "detection": ("mask-rcnn_swin-t-p4-w7_fpn_1x_coco", {"real", "gaussian"}),
      "segmentation": ("vit_deit-s16_upernet_8xb2-80k_ade20k-512x512", {"real", "gaussian"})}


def _image(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def make_imagenet(root: Path, rng: np.random.Generator, classes: int = 2, per_class: int = 2) -> Path:
    """train/ and val/ with one folder per class (WordNet ids), 500x375 JPEGs as in ImageNet."""
    for split in ("train", "val"):
        for c in range(classes):
            for i in range(per_class):
                _image(root / split / f"n{c:08d}" / f"{split}_{c}_{i}.JPEG", (500, 375), rng)
    return root


def make_coco(root: Path, rng: np.random.Generator, n: int = 2) -> Path:
    """val2017/, train2017/ and annotations/instances_*2017.json: 640x480 images with one box and
    polygon each, under COCO's 80 category names (mmdet's CocoDataset selects by name)."""
    from mmdet.datasets import CocoDataset

    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CocoDataset.METAINFO["classes"])]
    for split in ("val", "train"):
        images, annotations = [], []
        for i in range(n):
            name = f"{i:012d}.jpg"
            _image(root / f"{split}2017" / name, (640, 480), rng)
            images.append({"id": i + 1, "file_name": name, "width": 640, "height": 480})
            x, y, w, h = 100 + 50 * i, 80, 200, 150
            annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 80, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0,
                                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        path = root / "annotations" / f"instances_{split}2017.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def make_ade20k(root: Path, rng: np.random.Generator, n: int = 2) -> Path:
    """ADEChallengeData2016/{images,annotations}/{training,validation}: 683x512 JPEGs and PNG label
    maps with values 0..150 (0 is ignored, as reduce_zero_label makes it)."""
    base = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i in range(n):
            _image(base / "images" / split / f"ADE_{split}_{i:08d}.jpg", (683, 512), rng)
            label = base / "annotations" / split / f"ADE_{split}_{i:08d}.png"
            label.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 151, (512, 683), dtype=np.uint8)).save(label)
    return base


def run(ci: bool, device: str | None, folder: Path) -> list[dict]:
    """Generate the data under ``folder``, run the smoke cells there; return one summary per cell."""
    rng = np.random.default_rng(0)
    data = {"classification": lambda: make_imagenet(folder / "imagenet", rng),
            "detection": lambda: make_coco(folder / "coco", rng),
            "segmentation": lambda: make_ade20k(folder / "ade", rng)}
    store = ResultStore(folder / "results")
    summary = []
    for task, name in SUITES.items():
        suite = suites.load_suite(name)
        model, methods = CI[task]
        cells = [c for c in suites.expand(suite)
                 if not ci or (c.model == model and c.method in methods and not c.mixed)]
        cells = with_weights(cells, suite["checkpoints"])
        options = RunOptions(device=device, data_root=str(data[task]()), checkpoints=suite["checkpoints"],
                             workers=0)  # a few images: loader processes would cost more than they save
        start = time.time()
        for cell, record in zip(cells, run_cells(cells, options, store), strict=True):
            summary.append({"task": task, "model": cell.model, "method": cell.method, "precision": cell.precision,
                            "status": record["status"] if record else "missing",
                            "error": (record or {}).get("error"), "wall_s": (record or {}).get("wall_s")})
        print(f"{name}: {len(cells)} cells in {time.time() - start:.0f} s", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ci", action="store_true", help="the subset the tests run (see above)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--keep", help="a folder to keep the data and results in (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clamp-smoke-") as tmp:
        summary = run(args.ci, args.device, Path(args.keep or tmp))
    for row in summary:
        print(f"{row['status']:7} {row['task']:15} {row['model']:70} {row['method']:12} {row['precision']:8} "
              f"{row['wall_s'] or '':>8} {row['error'] or ''}")
    failed = [r for r in summary if r["status"] != "ok"]
    print(f"{len(summary) - len(failed)} of {len(summary)} smoke cells ran")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
