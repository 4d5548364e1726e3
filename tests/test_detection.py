"""The detection adapter on the micro Mask R-CNN: its numbers are mmdet's own."""
import copy
import json
import tempfile

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from baselines.calibration import RealData
from clamp.quant import BitPlan, QuantConfig
from clamp.registry import make_method
from tasks import make_task
from tasks.detection import DetectionTask

MODEL = "micro_mask-rcnn_swin_fmnist"
N_EVAL = 100


@pytest.fixture(scope="module")
def task():
    return DetectionTask(MODEL, n_eval=N_EVAL)


@pytest.fixture(scope="module")
def fp(task):
    return task.evaluate(task.build_model())


def test_generated_set_is_valid_coco_and_its_ground_truth_scores_100(task):
    coco = COCO(str(task.data_root / "annotations" / "instances_val.json"))
    assert len(coco.getImgIds()) == 300 and len(coco.getCatIds()) == 10
    anns = coco.loadAnns(coco.getAnnIds())
    assert 2 * 300 <= len(anns) <= 4 * 300
    for iou_type in ("bbox", "segm"):
        results = [{**a, "score": 1.0} for a in copy.deepcopy(anns)]
        evaluator = COCOeval(coco, coco.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert evaluator.stats[0] == pytest.approx(1.0)  # mAP@[.5:.95]


def test_micro_set_is_deterministic(task):
    from tasks.micro.canvas import CanvasSpec, canvases

    spec = CanvasSpec(n_val=3)
    a, b = list(canvases("val", spec)), list(canvases("val", spec))
    assert all(np.array_equal(x[0], y[0]) and len(x[1]) == len(y[1]) for x, y in zip(a, b, strict=True))


def test_fp_map_equals_mmdet_runner_test_loop(task, fp):
    """The same config, checkpoint and images through mmengine's Runner.from_cfg(...).test()."""
    from mmengine.runner import Runner

    cfg = copy.deepcopy(task.cfg)
    dataloader, evaluator = task.test_config()
    cfg.test_dataloader, cfg.test_evaluator = dataloader, evaluator
    cfg.load_from = str(task.checkpoint)
    with tempfile.TemporaryDirectory() as work_dir:
        cfg.work_dir = work_dir
        metrics = Runner.from_cfg(cfg).test()
    assert fp["bbox_mAP"] == pytest.approx(100 * metrics["coco/bbox_mAP"])
    assert fp["segm_mAP"] == pytest.approx(100 * metrics["coco/segm_mAP"])
    assert fp["bbox_mAP"] > 20 and fp["segm_mAP"] > 20  # a trained detector, far above zero
    assert fp["n_eval"] == N_EVAL


def test_w16a16_backbone_within_0p2_map(task, fp):
    model = task.build_model()
    qmodel, _ = RealData(n=8).quantize(task, model, QuantConfig(BitPlan(16, 16)), seed=0)
    q = task.evaluate(qmodel)
    assert abs(q["bbox_mAP"] - fp["bbox_mAP"]) <= 0.2 and abs(q["segm_mAP"] - fp["segm_mAP"]) <= 0.2
    assert task.build_model() is model and model.backbone is not qmodel.backbone  # the FP model is untouched
    assert qmodel.roi_head is not model.roi_head


@pytest.mark.parametrize("method, options", [
    ("psaq-vit-v2", {"n": 4, "steps": 4, "rounds": 1, "image_steps": 2, "student_steps": 2}),
    ("clamp-vit", {"n": 4, "rounds": ((4, 15),), "passes": 1, "cycles": 2, "population": 3, "tournament": 2,
                   "refine_steps": 1}),
])
def test_label_free_methods_run_on_the_detector_backbone(method, options):
    task = DetectionTask(MODEL, n_eval=16)
    qmodel, report = make_method(method, **options).quantize(task, task.build_model(), QuantConfig(BitPlan(8, 8)), 0)
    assert report["n_calib"] == 4 and task.evaluate(qmodel)["bbox_mAP"] > 5


def test_quantizing_the_neck_too():
    task = DetectionTask(MODEL, n_eval=16, quant_neck=True)
    qmodel, _ = RealData(n=4).quantize(task, task.build_model(), QuantConfig(BitPlan(8, 8)), seed=0)
    assert type(qmodel.neck.lateral_convs[0].conv).__name__ == "QuantConv2d"
    assert type(task.build_model().neck.lateral_convs[0].conv).__name__ == "Conv2d"


def test_bad_inputs_are_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config nope\.py does not exist"):
        make_task("detection", "nope.py")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        make_task("detection", "nope")
    with pytest.raises(FileNotFoundError, match="does not exist: pass an existing file"):
        _ = make_task("detection", MODEL, checkpoint=str(tmp_path / "missing.pth")).checkpoint
    with pytest.raises(FileNotFoundError, match="pass --data-root or set CLAMP_COCO"):
        make_task("detection", "mask-rcnn_swin-t-p4-w7_fpn_1x_coco", data_root=str(tmp_path))
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"cannot load .*corrupt\.pth into micro_mask-rcnn_swin_fmnist"):
        make_task("detection", MODEL, checkpoint=str(bad)).build_model()


def test_coco_subset_scores_only_its_images(task):
    _, evaluator = task.test_config()
    images = json.loads(open(evaluator.ann_file).read())["images"]
    assert len(images) == N_EVAL
