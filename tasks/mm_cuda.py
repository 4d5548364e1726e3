"""mmdet on CUDA with mmcv's CPU-only build: RoIAlign and NMS through torchvision's CUDA kernels.

tools/install_mm.py builds mmcv 2.1.0 with CPU ops only, and mmdet's test path calls two mmcv
ops: RoIAlign (the RoI extractors) and NMS (RPN proposals, per-class box post-processing). On a
CUDA device both run through torchvision, which ships CUDA kernels with every CUDA build of
torch: RoIAlign by mmcv's own ``use_torchvision`` switch in the config, NMS by routing CUDA
tensors of mmcv's ``nms`` extension call to ``torchvision.ops.nms`` (mmcv has no switch for it).
We chose this over compiling mmcv's CUDA ops because that needs nvcc and CUDA headers matching
torch's CUDA 13 and a long compile of a 2023 code base we cannot test without a GPU; the
torchvision kernels compute the same (aligned RoIAlign, greedy NMS sorted by score) and are
checked against mmcv's on CPU in tests/test_detection.py.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
import torchvision


def use_torchvision_roi_align(cfg: Any) -> None:
    """Set ``use_torchvision=True`` on every RoIAlign layer of an mm model config (in place)."""
    if isinstance(cfg, dict):
        if cfg.get("type") == "RoIAlign":
            cfg["use_torchvision"] = True
        for value in cfg.values():
            use_torchvision_roi_align(value)
    elif isinstance(cfg, list | tuple):
        for value in cfg:
            use_torchvision_roi_align(value)


def torchvision_nms(bboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int) -> torch.Tensor:
    """mmcv's ``ext_module.nms`` contract (kept indices, highest score first) with torchvision."""
    if offset != 0:
        raise ValueError("torchvision's NMS has no legacy +1 box offset: use offset=0 (mmdet 3 does)")
    return torchvision.ops.nms(bboxes, scores, iou_threshold)


class _NMSDispatch:
    """mmcv's extension module with ``nms`` of CUDA tensors sent to torchvision."""

    def __init__(self, ext: Any) -> None:
        self._ext = ext

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ext, name)

    def nms(self, bboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int) -> torch.Tensor:
        if bboxes.is_cuda:
            return torchvision_nms(bboxes, scores, iou_threshold, offset)
        return self._ext.nms(bboxes, scores, iou_threshold=iou_threshold, offset=offset)


def route_nms_to_torchvision() -> None:
    """Make mmcv's NMS run CUDA tensors through torchvision (idempotent; CPU tensors unchanged)."""
    mmcv_nms = importlib.import_module("mmcv.ops.nms")  # the module: mmcv.ops.nms the attribute is the function
    if not isinstance(mmcv_nms.ext_module, _NMSDispatch):
        mmcv_nms.ext_module = _NMSDispatch(mmcv_nms.ext_module)
