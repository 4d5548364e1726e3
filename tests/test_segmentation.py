"""The segmentation adapter on the micro UperNet: its numbers are mmseg's own."""
import copy
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.calibration import RealData
from clamp.quant import BitPlan, QuantConfig
from clamp.registry import make_method
from tasks import make_task
from tasks.segmentation import SegmentationTask

MODEL = "micro_upernet_deit_fmnist"
N_EVAL = 100


@pytest.fixture(scope="module")
def task():
    return SegmentationTask(MODEL, n_eval=N_EVAL)


@pytest.fixture(scope="module")
def fp(task):
    return task.evaluate(task.build_model())


def test_ground_truth_fed_back_scores_100_miou(task):
    """mmseg's IoUMetric on the generated labels as predictions: every class present, 100 mIoU."""
    from mmseg.evaluation import IoUMetric

    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": task.cfg.classes}
    labels = sorted((task.data_root / "annotations" / "validation").iterdir())
    seen = set()
    for path in labels:
        gt = torch.from_numpy(np.array(Image.open(path)).astype(np.int64))
        seen |= set(gt.unique().tolist())
        metric.process({}, [{"pred_sem_seg": {"data": gt[None]}, "gt_sem_seg": {"data": gt[None]}}])
    assert seen == set(range(11))  # background and the ten Fashion-MNIST classes
    assert metric.compute_metrics(metric.results)["mIoU"] == pytest.approx(100.0)


def test_fp_miou_equals_mmseg_runner_test_loop(task, fp):
    """The same config, checkpoint and images through mmengine's Runner.from_cfg(...).test()."""
    from mmengine.runner import Runner

    cfg = copy.deepcopy(task.cfg)
    cfg.test_dataloader, cfg.test_evaluator = task.test_config()
    cfg.load_from = str(task.checkpoint)
    with tempfile.TemporaryDirectory() as work_dir:
        cfg.work_dir = work_dir
        metrics = Runner.from_cfg(cfg).test()
    for key in ("mIoU", "mAcc", "aAcc"):
        assert fp[key] == pytest.approx(metrics[key], abs=0.01)
    assert fp["mIoU"] > 30  # far above chance (11 classes)
    assert fp["n_eval"] == N_EVAL


def test_w16a16_backbone_within_0p2_miou(task, fp):
    qmodel, _ = RealData(n=8).quantize(task, task.build_model(), QuantConfig(BitPlan(16, 16)), seed=0)
    assert abs(task.evaluate(qmodel)["mIoU"] - fp["mIoU"]) <= 0.2


@pytest.mark.parametrize("method, options", [
    ("psaq-vit-v2", {"n": 4, "steps": 4, "rounds": 1, "image_steps": 2, "student_steps": 2}),
    ("clamp-vit", {"n": 4, "rounds": ((4, 15),), "passes": 1, "cycles": 2, "population": 3, "tournament": 2,
                   "refine_steps": 1}),
])
def test_label_free_methods_run_on_the_vit_backbone(method, options):
    task = SegmentationTask(MODEL, n_eval=16)
    qmodel, report = make_method(method, **options).quantize(task, task.build_model(), QuantConfig(BitPlan(8, 8)), 0)
    assert report["n_calib"] == 4 and task.evaluate(qmodel)["mIoU"] > 10


def test_bad_inputs_are_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config nope\.py does not exist"):
        make_task("segmentation", "nope.py")
    with pytest.raises(FileNotFoundError, match="does not exist: pass an existing file"):
        _ = make_task("segmentation", MODEL, checkpoint=str(tmp_path / "missing.pth")).checkpoint
    with pytest.raises(FileNotFoundError, match="pass --data-root or set CLAMP_ADE20K"):
        make_task("segmentation", "vit_deit-s16_upernet_8xb2-80k_ade20k-512x512", data_root=str(tmp_path))
