"""Object detection and instance segmentation with mmdet: COCO val2017 at paper scale, the
Fashion-MNIST canvases at micro scale; box and mask mAP from mmdet's own CocoMetric."""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from clamp.io import atomic_write_text, cache_dir, config_key
from tasks import swin_keys
from tasks.fake_data import random_image
from tasks.mm import MMTask

COCO_ENV = "CLAMP_COCO"
REPO_CONFIGS = Path(__file__).parent / "configs"


class DetectionTask(MMTask):
    """An mmdet detector (config + checkpoint) whose SwinTransformer backbone the methods quantize."""

    name = "detection"
    metric = "bbox_mAP"
    scope = "mmdet"
    package = "mmdet"
    data_env = COCO_ENV
    data_what = "COCO: a folder with val2017/, train2017/ and annotations/instances_val2017.json"
    micro_models = ("micro_mask-rcnn_swin_fmnist",)
    paper_models = ("mask-rcnn_swin-t-p4-w7_fpn_1x_coco", "mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco",
                    "mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco",
                    "cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco",
                    "cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-crop-3x_coco")
    smoke_subset = ("mask-rcnn_swin-t-p4-w7_fpn_1x_coco", ("real", "gaussian"))

    @classmethod
    def _config_path(cls, model_id: str) -> Path:
        repo = REPO_CONFIGS / f"{model_id}.py"  # Cascade Mask R-CNN + Swin: mmdet ships no config
        return repo if repo.is_file() else super()._config_path(model_id)

    @staticmethod
    def fake_dataset(root: Path, rng: np.random.Generator, n: int = 2) -> Path:
        """val2017/, train2017/ and annotations/instances_*2017.json: 640x480 images with one box and
        polygon each, under COCO's 80 category names (mmdet's CocoDataset selects by name)."""
        from mmdet.datasets import CocoDataset

        categories = [{"id": i + 1, "name": name} for i, name in enumerate(CocoDataset.METAINFO["classes"])]
        for split in ("val", "train"):
            images, annotations = [], []
            for i in range(n):
                name = f"{i:012d}.jpg"
                random_image(root / f"{split}2017" / name, (640, 480), rng)
                images.append({"id": i + 1, "file_name": name, "width": 640, "height": 480})
                x, y, w, h = 100 + 50 * i, 80, 200, 150
                annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 80, "bbox": [x, y, w, h],
                                    "area": w * h, "iscrowd": 0,
                                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
            path = root / "annotations" / f"instances_{split}2017.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        return root

    def convert_checkpoint(self, state: dict) -> dict:
        """The published Cascade Mask R-CNN Swin weights have the Swin repository's (mmdet 2.x) keys."""
        return swin_keys.convert(state) if swin_keys.is_swin_repo(state) else state

    def _data_root(self, data_root: str | None) -> Path:
        root = super()._data_root(data_root)
        if not (root / "annotations" / "instances_val2017.json").is_file() or not (root / "val2017").is_dir():
            raise FileNotFoundError(f"COCO not found at {str(root)!r}: pass --data-root or set {COCO_ENV} to "
                                    f"{self.data_what.split(': ', 1)[1]}")
        return root

    def _split(self, split: str) -> tuple[str, str]:
        """(annotation file, image folder) of a split, relative to the data root."""
        if self.micro:
            return f"annotations/instances_{split}.json", f"{split}/"
        return f"annotations/instances_{split}2017.json", f"{split}2017/"

    def _set_data(self, cfg, root: Path) -> None:
        ann, images = self._split("val")
        dataset = cfg.test_dataloader.dataset
        dataset.update(data_root=str(root), ann_file=ann, data_prefix=dict(img=images))
        cfg.test_evaluator.update(ann_file=str(root / ann))
        if "train_dataloader" in cfg:
            ann, images = self._split("train")
            cfg.train_dataloader.dataset.update(data_root=str(root), ann_file=ann, data_prefix=dict(img=images))

    def train_images(self) -> Path:
        return self.data_root / self._split("train")[1]

    @cached_property
    def eval_annotations(self) -> tuple[Path, int]:
        """The annotation file CocoMetric scores and its number of images. CocoMetric scores
        every image of its file: an ``n_eval`` subset gets a file of its own, written once."""
        ann_file = Path(super().test_config()[1].ann_file)
        coco = json.loads(ann_file.read_text())
        if self.n_eval is None:
            return ann_file, len(coco["images"])
        path = cache_dir("coco-subsets") / f"{config_key([str(ann_file), ann_file.stat().st_mtime, self.n_eval])}.json"
        keep = {img["id"] for img in sorted(coco["images"], key=lambda img: img["id"])[:self.n_eval]}
        if not path.is_file():
            subset = {**coco, "images": [i for i in coco["images"] if i["id"] in keep],
                      "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
            atomic_write_text(path, json.dumps(subset))
        return path, len(keep)

    def test_config(self):
        dataloader, evaluator = super().test_config()
        if self.n_eval is None:
            return dataloader, evaluator
        path = str(self.eval_annotations[0])
        dataloader, evaluator = dataloader.copy(), evaluator.copy()
        dataloader.dataset = {**dataloader.dataset, "ann_file": path}
        evaluator.ann_file = path
        return dataloader, evaluator

    def convert(self, metrics: dict) -> dict[str, float]:
        """CocoMetric's fractions as percents: box and mask mAP, AP50, AP75. A detector that finds
        nothing in any image scores 0 with ``no_detections`` = 1: CocoMetric then logs "The testing
        results of the whole dataset is empty" and returns no key at all (mmdet 3.x
        evaluation/metrics/coco_metric.py, ``compute_metrics``)."""
        kinds = self.cfg.test_evaluator.metric
        names = [f"{kind}_mAP{suffix}" for kind in ([kinds] if isinstance(kinds, str) else kinds)
                 for suffix in ("", "_50", "_75")]
        n_eval = self.eval_annotations[1]
        if not metrics:
            return {**dict.fromkeys(names, 0.0), "no_detections": 1.0, "n_eval": n_eval}
        return {**{name: round(100 * float(metrics[f"coco/{name}"]), 2) for name in names if f"coco/{name}" in metrics},
                "n_eval": n_eval}
