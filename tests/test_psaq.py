"""PSAQ-ViT and PSAQ-ViT V2 on the micro models and on a bare backbone."""
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from baselines.psaq import PSAQViT
from baselines.psaq_v2 import PSAQViTV2
from clamp.generate.features import MHSACapture
from clamp.quant import BitPlan, QuantConfig
from clamp.task import InputSpec
from tasks.classification import ClassificationTask

TINY = dict(steps=4, jitter=(15, 30))


@pytest.fixture(scope="module")
def task():
    return ClassificationTask("micro_swin_patch2_window4_32", n_eval=500)


class BackboneTask:
    """A label-free task whose network is a ViT without a classifier (like a detector backbone)."""

    name, model_id, weights_id, device = "backbone", "tiny-backbone", "random-seed-0", torch.device("cpu")
    input_spec = InputSpec((3, 32, 32), (0.5,) * 3, (0.5,) * 3)
    num_classes = None
    quant_exclude = ()
    metric = "cos"

    def build_model(self):
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
                                 num_heads=3, num_classes=0).eval().requires_grad_(False)

    def backbone(self, model):
        return model

    def replace_backbone(self, model, net):
        return net

    def output_loss(self, fp_out, q_out):
        return 1 - F.cosine_similarity(fp_out, q_out, dim=-1).mean()


def psaq_loss(method, task, net, x, labels, tv_goal):
    with MHSACapture(net) as capture:
        out = net(x)
        return (method.prior_loss(x, capture, tv_goal) + F.cross_entropy(out, labels)).item()


def test_a_few_steps_lower_the_loss(task):
    method = PSAQViT(n=8, **TINY)
    net = task.build_model()
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (8,), generator=gen)
    goal = method.tv_prior().goal((8, 3, 32, 32), gen)
    start = torch.randn((8, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    images = method.generate(task, net, seed=0)
    assert psaq_loss(method, task, net, images, labels, goal) < psaq_loss(method, task, net, start, labels, goal)


def test_generation_is_deterministic_under_a_seed(task):
    net = task.build_model()
    a, b = (PSAQViT(n=4, **TINY).generate(task, net, seed=3) for _ in range(2))
    c = PSAQViT(n=4, **TINY).generate(task, net, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_psaq_quantizes_and_saves_its_images(task, image_steps):
    model = task.build_model()
    qmodel, report = PSAQViT(n=8, **TINY).quantize(task, model, QuantConfig(BitPlan(8, 8)), seed=0)
    assert report["calibration"] == "psaq-vit:8"
    assert report["image_steps"] == image_steps[0] == 4 * 2  # 4 steps in each of 2 jitter rounds
    assert torch.load(report["images"]).shape == (8, 3, 32, 32)
    assert Path(report["images"]).with_suffix(".png").is_file()
    assert task.evaluate(qmodel)["top1"] > 50


def test_literal_constants_stay_reachable(task):
    net = task.build_model()
    scaled = PSAQViT(n=4, **TINY).generation(net, ((500, 15),))
    literal = PSAQViT(n=4, scale_to_input=False, **TINY).generation(net, ((500, 15),))
    assert scaled.jitter(15, 32) == 2 and literal.jitter(15, 32) == 15
    assert scaled.lr == 0.25  # Swin


def test_v2_runs_label_free_on_a_bare_backbone(image_steps):
    task = BackboneTask()
    model = task.build_model()
    v2 = PSAQViTV2(n=4, steps=3, rounds=2, image_steps=2, student_steps=3)
    qmodel, report = v2.quantize(task, model, QuantConfig(BitPlan(4, 8)), seed=0)
    x = torch.randn(2, 3, 32, 32)
    assert qmodel(x).shape == model(x).shape == (2, 48)
    assert len(report["student_loss"]) == 2
    assert report["image_steps"] == image_steps[0] == 3 + 2 * 2  # warm start, then 2 rounds of 2 image steps
    with pytest.raises(ValueError, match="psaq-vit needs class labels"):
        PSAQViT(n=4, **TINY).quantize(task, model, QuantConfig(BitPlan(4, 8)), seed=0)


def test_v2_student_fit_lowers_its_loss(task):
    from baselines.psaq_v2 import fit_scales
    from clamp.quant import calibrate, quantize_model
    net = task.build_model()
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    qnet = calibrate(quantize_model(net, QuantConfig(BitPlan(4, 4))), [images])
    losses = fit_scales(qnet, net, images, task.output_loss, steps=20, lr=0.02, batch=16)
    assert losses[-1] < losses[0]
