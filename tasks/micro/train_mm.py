"""Train a micro mm model (detector or segmentor) with mmengine's Runner on its generated set and
save it commit-ready: a plain state dict (no pickled Runner state) and a JSON record.

    python -m tasks.micro.train_mm micro_mask-rcnn_swin_fmnist
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from tasks import make_task
from tasks.detection import DetectionTask
from tasks.mm import CHECKPOINTS
from tasks.segmentation import SegmentationTask

MICRO = {m: t.name for t in (DetectionTask, SegmentationTask) for m in t.micro_models}


def train(model_id: str, seed: int) -> dict:
    from mmengine.runner import Runner

    task = make_task(MICRO[model_id], model_id)
    cfg = task.cfg.copy()
    cfg.randomness = dict(seed=seed)
    cfg.default_hooks.checkpoint = None  # saved below as a plain state dict
    cfg.default_hooks.logger.interval = 50
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="clamp-train-") as work_dir:
        cfg.work_dir = work_dir
        runner = Runner.from_cfg(cfg)
        runner.train()
    path = CHECKPOINTS / f"{model_id}.pth"
    torch.save({"state_dict": runner.model.state_dict(), "meta": {"seed": seed}}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    train_s = round(time.time() - start, 1)
    fp = make_task(MICRO[model_id], model_id).evaluate(make_task(MICRO[model_id], model_id).build_model())
    record = {"model": model_id, "config": task.config_path.name, "seed": seed, "train_s": train_s,
              "max_epochs": cfg.train_cfg.get("max_epochs"), "fp": fp, "torch": torch.__version__}
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(MICRO), choices=list(MICRO))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for model_id in args.models:
        print(json.dumps(train(model_id, args.seed)))


if __name__ == "__main__":
    main()
