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
    if method == "clamp-vit":  # the row says which maps L_O compared: the micro maps need no pooling
        assert report["lo_maps"] == "32x32 16x16 8x8 4x4"


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


def test_a_detector_that_finds_nothing_scores_zero_with_a_flag():
    """CocoMetric returns no key when no image has a detection; the row still gets its metric."""
    task = DetectionTask(MODEL, n_eval=4)
    model = copy.deepcopy(task.build_model())  # build_model returns the task's one FP model
    model.roi_head.test_cfg.score_thr = 1.1  # above any softmax score: every box is dropped
    metrics = task.evaluate(model)
    assert metrics == {**{f"{kind}_mAP{suffix}": 0.0 for kind in ("bbox", "segm") for suffix in ("", "_50", "_75")},
                       "no_detections": 1.0, "n_eval": 4}
    assert "no_detections" not in task.evaluate(task.build_model())  # the trained detector finds its objects


def test_requested_device_holds_through_fp_eval_quantization_and_quantized_eval(monkeypatch):
    """On a GPU machine mmengine's Runner moves a model to its default device, cuda:0. Here that
    default is made to differ from the requested device ('meta'): nothing may follow it."""
    import mmengine.runner.runner as mm_runner
    import torch

    monkeypatch.setattr(mm_runner, "get_device", lambda: "meta")
    for device in ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]:
        task = DetectionTask(MODEL, n_eval=8, device=device)
        model = task.build_model()
        task.evaluate(model)
        qmodel, _ = RealData(n=4).quantize(task, model, QuantConfig(BitPlan(8, 8)), seed=0)
        assert task.evaluate(qmodel)["bbox_mAP"] > 5
        for m in (model, qmodel):
            assert {t.device.type for t in [*m.parameters(), *m.buffers()]} == {torch.device(device).type}


def test_swin_repo_patch_merging_equals_mmdet_after_conversion():
    """The Swin repository's patch merging (cat of the 2x2 neighbours, norm, reduction), written
    out here, equals mmdet 3's nn.Unfold one with the converted weights."""
    import torch
    from mmdet.models.layers import PatchMerging

    from tasks.swin_keys import convert

    torch.manual_seed(0)
    c, h, w = 8, 6, 4
    norm, reduction = torch.nn.LayerNorm(4 * c), torch.nn.Linear(4 * c, 2 * c, bias=False)
    for p in (norm.weight, norm.bias):
        p.data.normal_()
    x = torch.randn(2, h * w, c)
    grid = x.view(2, h, w, c)
    cat = torch.cat([grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]], -1)
    expected = reduction(norm(cat.view(2, -1, 4 * c)))
    published = {"backbone.layers.0.downsample.reduction.weight": reduction.weight,
                 "backbone.layers.0.downsample.norm.weight": norm.weight,
                 "backbone.layers.0.downsample.norm.bias": norm.bias}
    ours = PatchMerging(c, 2 * c)
    converted = convert(published)
    ours.load_state_dict({k.removeprefix("backbone.stages.0.downsample."): v for k, v in converted.items()})
    got, _ = ours(x, (h, w))
    assert torch.allclose(got, expected, atol=1e-5)


def published_swin_t_backbone() -> dict:
    """Key names and shapes of the Swin repository's Swin-T detection backbone (its own
    SwinTransformer: depths 2-2-6-2, width 96 doubling, 3-6-12-24 heads, window 7)."""
    import torch

    shapes = {"backbone.patch_embed.proj.weight": (96, 3, 4, 4), "backbone.patch_embed.proj.bias": (96,),
              "backbone.patch_embed.norm.weight": (96,), "backbone.patch_embed.norm.bias": (96,)}
    for i, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24), strict=True)):
        dim, stage = 96 * 2 ** i, f"backbone.layers.{i}."
        for j in range(depth):
            b = f"{stage}blocks.{j}."
            shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "norm2.weight": (dim,),
                           b + "norm2.bias": (dim,), b + "attn.relative_position_bias_table": (169, heads),
                           b + "attn.relative_position_index": (49, 49), b + "attn.qkv.weight": (3 * dim, dim),
                           b + "attn.qkv.bias": (3 * dim,), b + "attn.proj.weight": (dim, dim),
                           b + "attn.proj.bias": (dim,), b + "mlp.fc1.weight": (4 * dim, dim),
                           b + "mlp.fc1.bias": (4 * dim,), b + "mlp.fc2.weight": (dim, 4 * dim),
                           b + "mlp.fc2.bias": (dim,)})
        if i < 3:
            shapes.update({stage + "downsample.reduction.weight": (2 * dim, 4 * dim),
                           stage + "downsample.norm.weight": (4 * dim,), stage + "downsample.norm.bias": (4 * dim,)})
        shapes.update({f"backbone.norm{i}.weight": (dim,), f"backbone.norm{i}.bias": (dim,)})
    return {k: torch.zeros(v, dtype=torch.long if k.endswith("index") else torch.float) for k, v in shapes.items()}


@pytest.mark.parametrize("model_id", DetectionTask.paper_models)
def test_every_paper_detector_scores_box_and_mask_ap(model_id):
    """As the published weights report them (mmdet's 3x Cascade recipe alone scores boxes only)."""
    from mmengine.config import Config

    assert Config.fromfile(str(DetectionTask._config_path(model_id))).test_evaluator.metric == ["bbox", "segm"]


def test_published_cascade_swin_keys_load_strictly():
    """A state dict with the published Swin-T Cascade Mask R-CNN names and shapes (backbone in the
    Swin repository's layout, mmdet 2.x heads) loads strictly into our config after conversion."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from tasks.detection import REPO_CONFIGS, DetectionTask

    init_default_scope("mmdet")
    cfg = Config.fromfile(str(REPO_CONFIGS / "cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py"))
    model = MODELS.build(cfg.model)
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert {"roi_head.bbox_head.2.shared_convs.3.bn.running_var", "roi_head.bbox_head.0.fc_reg.weight",
            "roi_head.mask_head.2.conv_logits.weight"} <= set(heads)
    assert heads["roi_head.bbox_head.0.fc_reg.weight"].shape == (320, 1024)  # class-specific, 80 x 4
    published = {**published_swin_t_backbone(), **heads}
    task = DetectionTask.__new__(DetectionTask)
    converted = task.convert_checkpoint(published)
    assert model.load_state_dict(converted, strict=True)
    assert DetectionTask.weight_file("cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco").source.endswith(
        "v1.0.2/cascade_mask_rcnn_swin_tiny_patch4_window7.pth")


def test_torchvision_roi_align_and_nms_equal_mmcv_kernels():
    """On CUDA, RoIAlign and NMS run through torchvision (tasks/mm_cuda.py): here each against
    mmcv's own CPU kernel, and the config switch reaching every RoI layer of a Cascade config."""
    import importlib

    import torch
    from mmcv.ops import RoIAlign
    from mmengine.config import Config

    from tasks.detection import REPO_CONFIGS
    from tasks.mm_cuda import _NMSDispatch, torchvision_nms, use_torchvision_roi_align

    torch.manual_seed(0)
    feats, xy, wh = torch.randn(2, 8, 32, 32), torch.rand(200, 2) * 100, torch.rand(200, 2) * 40 + 2
    rois = torch.cat([torch.randint(0, 2, (200, 1)).float(), xy, xy + wh], 1)
    for sampling in (0, 2):
        mmcv_out = RoIAlign(7, 0.25, sampling, aligned=True)(feats, rois)
        tv_out = RoIAlign(7, 0.25, sampling, aligned=True, use_torchvision=True)(feats, rois)
        assert torch.allclose(mmcv_out, tv_out, atol=1e-5)
    boxes, scores = rois[:, 1:], torch.rand(200)
    mmcv_nms = importlib.import_module("mmcv.ops.nms")
    ext = mmcv_nms.ext_module._ext if isinstance(mmcv_nms.ext_module, _NMSDispatch) else mmcv_nms.ext_module
    kept = ext.nms(boxes, scores, iou_threshold=0.5, offset=0)
    assert 20 < len(kept) < 200 and torch.equal(torchvision_nms(boxes, scores, 0.5, 0), kept)
    cfg = Config.fromfile(str(REPO_CONFIGS / "cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py"))
    use_torchvision_roi_align(cfg.model)
    layers = [cfg.model.roi_head[k].roi_layer for k in ("bbox_roi_extractor", "mask_roi_extractor")]
    assert all(layer.type == "RoIAlign" and layer.use_torchvision for layer in layers)
