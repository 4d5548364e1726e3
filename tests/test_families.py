"""The worked example of README "Adding a model family" (tasks/families/timm_vit_relpos.py): one
file and its entry point make a timm family quantize under both layouts and feed the generation
losses."""
from __future__ import annotations

import timm
import torch

from clamp.generate.features import MHSACapture
from clamp.quant import BitPlan, QuantConfig, calibrate, quantize_model, quantizers
from tasks.families.timm_vit_relpos import QuantRelPosAttention


def relpos_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_relpos_small_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
                             num_heads=3, num_classes=10).eval()


def test_the_family_quantizes_under_both_layouts_and_16_bits_is_fp():
    fp, x = relpos_vit(), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = fp(x)
        for layout, sites in (("reference", 10), ("inputs", None)):
            q16 = calibrate(quantize_model(fp, QuantConfig(BitPlan(16, 16), layout=layout)), [x])
            q32 = calibrate(quantize_model(fp, QuantConfig(BitPlan(32, 32), layout=layout)), [x])
            q4 = calibrate(quantize_model(fp, QuantConfig(BitPlan(4, 4), layout=layout)), [x])
            assert sum(isinstance(m, QuantRelPosAttention) for m in q16.modules()) == 2
            assert torch.allclose(q32(x), ref, atol=1e-5)  # the adapter's explicit attention is the fused maths
            assert torch.allclose(q16(x), ref, atol=5e-3 * ref.abs().max())
            assert (q4(x) - ref).abs().max() > (q16(x) - ref).abs().max()
            if sites:  # per block: norm1, qkv, scores, av, proj, res1, norm2, act, fc2, res2
                acts = [q.name for q in quantizers(q16) if q.name.startswith("blocks.0.") and "weight" not in q.name]
                assert len(acts) == sites


def test_the_generation_losses_see_every_block_on_its_patch_grid():
    fp = relpos_vit()
    with MHSACapture(fp) as capture, torch.no_grad():
        fp(torch.randn(2, 3, 32, 32))
    assert [tuple(o.grid.shape) for o in capture.outputs] == [(2, 4, 4, 48)] * 2
