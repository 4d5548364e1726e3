"""The fake-quant core against hand-computed values and invariants."""
import pytest
import timm
import torch
from torch import nn

from clamp.quant import (
    BitPlan,
    Log2Quantizer,
    QuantConfig,
    Quantizer,
    calibrate,
    compression_report,
    fake_quant,
    quantize_model,
    quantizers,
)
from clamp.quant.modules import QuantConv2d, QuantLinear
from clamp.quant.quantizer import PtfQuantizer, range_to_affine
from tasks.families.timm_swin import QuantWindowAttention
from tasks.families.timm_vit import QuantViTAttention


def frozen(q: Quantizer, data: torch.Tensor) -> Quantizer:
    q.state = "calibrate"
    q(data)
    q.freeze()
    return q


def test_fake_quant_hand_values():
    # s = 0.5, z = 2, 4 bits: grid 0..15, so the representable range is [-1, 6.5]
    x = torch.tensor([-1.0, 0.26, 0.5, 3.0, 1000.0])
    out = fake_quant(x, torch.tensor(0.5), torch.tensor(2.0), 0, 15)
    assert torch.equal(out, torch.tensor([-1.0, 0.5, 0.5, 3.0, 6.5]))


def test_minmax_asymmetric_2bit_hand_values():
    # range [-1, 3] on 2 bits: s = 4/3, z = round(0.75) = 1
    q = frozen(Quantizer("t", 2), torch.tensor([-1.0, 0.0, 1.0, 3.0]))
    assert q.scale.item() == pytest.approx(4 / 3)
    assert q.zero_point.item() == 1
    out = q(torch.tensor([-1.0, 0.0, 1.0, 3.0]))
    assert torch.allclose(out, torch.tensor([-4 / 3, 0.0, 4 / 3, 8 / 3]))


def test_symmetric_4bit_hand_values():
    # symmetric: s = max|x| / 7, grid -8..7, no zero point
    q = frozen(Quantizer("t", 4, symmetric=True), torch.tensor([-1.0, 3.0]))
    assert q.scale.item() == pytest.approx(3 / 7)
    out = q(torch.tensor([-1.0, 3.0, -5.0]))
    assert torch.allclose(out, torch.tensor([-2 * 3 / 7, 3.0, -8 * 3 / 7]))


def test_range_widened_to_contain_zero():
    scale, zero = range_to_affine(torch.tensor(2.0), torch.tensor(4.0), 8, False)
    assert scale.item() == pytest.approx(4 / 255) and zero.item() == 0


def test_per_channel_vs_per_tensor_ranges():
    w = torch.tensor([[1.0, -1.0, 0.5], [100.0, -50.0, 20.0]])
    per_channel = frozen(Quantizer("w.weight", 8, axis=0), w)
    per_tensor = frozen(Quantizer("w.weight", 8), w)
    assert torch.allclose(per_channel.scale, torch.tensor([2 / 255, 150 / 255]))
    assert per_tensor.scale.item() == pytest.approx(150 / 255)
    err_c = (per_channel(w)[0] - w[0]).abs().max()
    err_t = (per_tensor(w)[0] - w[0]).abs().max()
    assert err_c <= 1 / 255 + 1e-6 < err_t


def test_log2_quantizer_hand_values():
    q = frozen(Log2Quantizer("attn", 3), torch.tensor([1.0, 0.0]))
    out = q(torch.tensor([1.0, 0.5, 0.3, 0.01, 1e-4]))
    assert torch.allclose(out, torch.tensor([1.0, 0.5, 0.25, 2.0**-7, 0.0]))


def test_percentile_clips_outliers_and_omse_beats_minmax():
    x = torch.cat([torch.linspace(-1, 1, 10001), torch.tensor([50.0])])
    pct = frozen(Quantizer("t", 4, observer="percentile"), x)
    minmax = frozen(Quantizer("t", 4), x)
    omse = frozen(Quantizer("t", 4, observer="omse"), x)
    assert pct.scale < minmax.scale / 10
    assert omse.scale < minmax.scale
    assert (omse(x) - x).pow(2).mean() < (minmax(x) - x).pow(2).mean()


def test_ptf_gives_an_outlier_channel_its_own_power_of_two_hand_values():
    """8 bits over the tensor's range [-1, 254]: s = 1, z = 1. The outlier channel keeps s; the small
    one (values -1, -0.5, 0.3, 1) has squared errors 0.34, 0.29, 0.6275, 0.9087 at s / 2^0..3 (its
    negative side is one step of the shared zero point), so it takes s / 2."""
    x = torch.tensor([[-1.0, 254.0], [-0.5, -1.0], [0.3, 100.0], [1.0, 0.0]])
    q = frozen(PtfQuantizer("blocks.0.res1", 8), x)
    assert torch.equal(q.scale, torch.tensor([0.5, 1.0])) and q.zero_point.item() == 1
    assert torch.equal(q(x), torch.tensor([[-0.5, 254.0], [-0.5, -1.0], [0.5, 100.0], [1.0, 0.0]]))
    plain = frozen(Quantizer("t", 8), x)
    assert (q(x) - x)[:, 0].pow(2).sum() < (plain(x) - x)[:, 0].pow(2).sum()


def test_ptf_sits_on_the_layernorm_inputs_of_the_reference_layout(tiny_vit):
    config = QuantConfig(BitPlan(8, 8), a_observer="ptf")
    qnet = calibrate(quantize_model(tiny_vit, config), [torch.randn(4, 3, 32, 32)])
    ptf = {q.name for q in quantizers(qnet) if isinstance(q, PtfQuantizer)}
    assert ptf == {"pos_sum", *(f"blocks.{i}.res{j}" for i in range(2) for j in (1, 2))}
    assert all(q.observer_name == "minmax" for q in quantizers(qnet) if q.name not in ptf)
    assert qnet.blocks[0].res1.scale.shape == (48,)  # one scale per channel
    with pytest.raises(ValueError, match="reference layout only"):
        QuantConfig(a_observer="ptf", layout="inputs")
    with pytest.raises(ValueError, match="unknown a_observer 'pft'"):
        QuantConfig(a_observer="pft")


def test_straight_through_gradient():
    x = torch.tensor([0.1, 0.7, 5.0], requires_grad=True)
    scale = torch.tensor(0.5, requires_grad=True)
    fake_quant(x, scale, torch.tensor(0.0), 0, 3).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 0.0]))  # clipped value passes no gradient
    assert scale.grad is not None


def test_bad_bits_are_one_clear_line():
    for bits in (1, 17, 0):
        with pytest.raises(ValueError, match=r"use 2\.\.16, or 32"):
            BitPlan(w_bits=bits)


def test_wrap_vit_covers_every_layer_and_matmul(tiny_vit):
    qmodel = quantize_model(tiny_vit, QuantConfig(layout="inputs"))
    n_linear = sum(isinstance(m, nn.Linear) for m in tiny_vit.modules())
    assert sum(isinstance(m, QuantLinear) for m in qmodel.modules()) == n_linear
    assert sum(isinstance(m, QuantConv2d) for m in qmodel.modules()) == 1  # patch embedding
    assert sum(isinstance(m, QuantViTAttention) for m in qmodel.modules()) == 2
    names = {q.name for q in quantizers(qmodel)}
    assert {"blocks.0.attn.qk.a", "blocks.0.attn.qk.b", "blocks.0.attn.av.a", "blocks.0.attn.av.b",
            "blocks.1.mlp.fc2.weight", "head.input", "patch_embed.proj.weight"} <= names
    assert not any(isinstance(m, QuantLinear) for m in tiny_vit.modules())  # the FP model is untouched


@pytest.mark.parametrize("layout", ["reference", "inputs"])
@pytest.mark.parametrize("model", ["tiny_vit", "tiny_swin"])
def test_16_bit_matches_fp_and_32_bit_is_fp(model, layout, request):
    fp = request.getfixturevalue(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = fp(x)
        q16 = calibrate(quantize_model(fp, QuantConfig(BitPlan(16, 16), layout=layout)), [x])
        q32 = calibrate(quantize_model(fp, QuantConfig(BitPlan(32, 32), layout=layout)), [x])
        q4 = calibrate(quantize_model(fp, QuantConfig(BitPlan(4, 4), layout=layout)), [x])
        assert torch.allclose(q16(x), ref, atol=5e-3 * ref.abs().max())  # ~20 rounding sites per block
        assert torch.allclose(q32(x), ref, atol=1e-6)  # explicit attention vs fused: same maths
        assert (q4(x) - ref).abs().max() > (q16(x) - ref).abs().max()


def test_swin_windows_and_log2_softmax(tiny_swin):
    qmodel = quantize_model(tiny_swin, QuantConfig(softmax_quant="log2", layout="inputs"))
    attn = [m for m in qmodel.modules() if isinstance(m, QuantWindowAttention)]
    assert len(attn) == 4 and all(isinstance(m.matmul_av.a_quant, Log2Quantizer) for m in attn)
    x = torch.randn(2, 3, 32, 32)
    calibrate(qmodel, [x])
    with torch.no_grad():
        assert (qmodel(x) - tiny_swin(x)).abs().max() < 0.1 * tiny_swin(x).abs().max() + 0.05


@pytest.mark.parametrize("layout", ["reference", "inputs"])
def test_distilled_deit_wraps(layout):
    fp = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    qmodel = calibrate(quantize_model(fp, QuantConfig(BitPlan(16, 16), layout=layout)), [x])
    with torch.no_grad():
        assert torch.allclose(qmodel(x), fp(x), atol=1e-3)
    assert {"head.input", "head_dist.input"} <= {q.name for q in quantizers(qmodel)}


def test_compression_of_hand_built_mixed_plan():
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 1, bias=True))
    plan = BitPlan(w_bits=8, a_bits=8, overrides={"0.weight": 4, "0.input": 6})
    qmodel = calibrate(quantize_model(fp, QuantConfig(plan, layout="inputs")), [torch.randn(8, 4)])
    report = compression_report(qmodel)
    # 8 weights at 4 bits, 2 at 8 bits, 1 bias at 32: 32 * 11 / (32 + 16 + 32)
    assert report["compression_ratio"] == pytest.approx(352 / 80)
    assert report["mean_w_bits"] == pytest.approx(48 / 10)
    assert report["mean_a_bits"] == pytest.approx(7.0)
    assert report["size_mb"] == pytest.approx(80 / 8 / 1e6)
    assert report["mean_w_bits_plain"] == pytest.approx(6.0)  # (4 + 8) / 2 layers
    # activation elements per image: 4 at 6 bits, 2 at 8 bits
    assert report["mean_a_bits_weighted"] == pytest.approx((4 * 6 + 2 * 8) / 6)
    # MACs per image: 4 x 2 at W4/A6, 2 x 1 at W8/A8
    assert report["gbops"] == pytest.approx((8 * 4 * 6 + 2 * 8 * 8) / 1e9)


def test_exclude_leaves_head_in_fp(tiny_vit):
    qmodel = quantize_model(tiny_vit, QuantConfig(exclude=("head",)))
    assert type(qmodel.head) is nn.Linear
    with pytest.raises(ValueError, match="no Linear, Conv2d or attention"):
        quantize_model(nn.Sequential(nn.ReLU()), QuantConfig())


def test_inference_fast_path_equals_the_differentiable_path():
    torch.manual_seed(0)
    x = torch.randn(1000) * 3
    q = frozen(Quantizer("t", 4), x)
    fast = q(x)
    slow = q(x.clone().requires_grad_(True))
    assert torch.equal(fast, slow.detach())
