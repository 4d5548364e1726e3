"""The reference layout: quantizers where PSAQ-ViT's quantized models put their QuantAct modules
(zkkli/PSAQ-ViT models/vit_quant.py, swin_quant.py, layers_quant.py), checked site by site, by
hand-computed weight values and against a PSAQ-style forward written out here."""
import pytest
import timm
import torch
from torch import nn

import tasks.micro.models  # noqa: F401  (registers the micro models)
from clamp.quant import BitPlan, QuantConfig, Quantizer, calibrate, compression_report, quantize_model, quantizers
from clamp.quant.quantizer import qrange

DEIT_BLOCK = ["norm1.out", "attn.qkv.out", "attn.scores", "attn.av", "attn.proj.out", "res1", "norm2.out",
              "mlp.act.out", "mlp.fc2.out", "res2"]
DEIT_MODEL = ["patch_embed.input", "patch_embed.proj.out", "embed", "pos_embed", "pos_sum", "head.input", "head.out"]


@pytest.fixture(scope="module")
def deit() -> nn.Module:
    return timm.create_model("micro_deit_patch4_32", pretrained=True).eval()


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    return timm.create_model("micro_swin_patch2_window4_32", pretrained=True).eval()


def activation_names(qmodel: nn.Module) -> set[str]:
    return {q.name for q in quantizers(qmodel) if not q.name.endswith(".weight")}


def test_deit_sites_are_psaq_vits(deit):
    names = activation_names(quantize_model(deit, QuantConfig()))
    expected = set(DEIT_MODEL) | {f"blocks.{i}.{site}" for i in range(4) for site in DEIT_BLOCK}
    assert names == expected
    assert len(names) == 7 + 4 * 10


def test_swin_sites_add_bias_table_and_patch_merging(swin):
    names = activation_names(quantize_model(swin, QuantConfig()))
    block = [*DEIT_BLOCK, "attn.table", "attn.scores_bias"]
    expected = {f"layers.{s}.blocks.{b}.{site}" for s in range(2) for b in range(2) for site in block}
    expected |= {"patch_embed.input", "patch_embed.proj.out", "patch_embed.norm.out", "layers.1.downsample.norm.out",
                 "layers.1.downsample.reduction.out", "norm.out", "head.fc.input", "head.fc.out"}
    assert names == expected


def test_softmax_layernorm_gelu_stay_fp(deit):
    qmodel = quantize_model(deit, QuantConfig())
    kinds = {type(m) for m in qmodel.modules() if isinstance(m, (nn.LayerNorm, nn.GELU, nn.Softmax))}
    assert kinds == {type(deit.blocks[0].norm1), type(deit.blocks[0].mlp.act)}  # the FP classes, not wrappers
    # no quantizer sits between the scores and attn·v: the softmax reads the quantized scores in FP
    assert not any("softmax" in q.name or q.name.endswith(".av.a") for q in quantizers(qmodel))


def test_weights_symmetric_full_range_hand_values():
    # 4 bits: s = max|w| / ((2^4 - 1) / 2) = 3 / 7.5 = 0.4; grid -8..7, so 3 -> round(7.5) = 8 -> 7
    q = Quantizer("w.weight", 4, axis=0, symmetric=True, full_range=True)
    w = torch.tensor([[-1.0, 3.0, 0.5], [0.2, -0.4, 0.1]])
    q.observer.observe(w)
    q.freeze()
    assert torch.allclose(q.scale, torch.tensor([0.4, 0.4 / 7.5]))
    # row 2: s = 0.4 / 7.5; 0.2/s = 3.75 -> 4, -0.4/s = -7.5 -> -8 (half to even, on the grid), 0.1/s -> 2
    s2 = 0.4 / 7.5
    assert torch.allclose(q(w), torch.tensor([[-0.8, 2.8, 0.4], [4 * s2, -8 * s2, 2 * s2]]))


def _act(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """PSAQ-ViT's AsymmetricQuantFunction on a per-tensor range."""
    qmin, qmax = qrange(bits, False)
    scale = max(hi - lo, 1e-8) / (qmax - qmin)
    zero = min(max(round(-lo / scale), qmin), qmax)
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def _weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """PSAQ-ViT's SymmetricQuantFunction per output channel."""
    qmin, qmax = qrange(bits, True)
    scale = w.reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-8) / ((qmax - qmin) / 2)
    scale = scale.reshape(-1, *[1] * (w.dim() - 1))
    return torch.clamp(torch.round(w / scale), qmin, qmax) * scale


def psaq_deit_forward(m: nn.Module, x: torch.Tensor, ranges: dict, bits: tuple[int, int]) -> torch.Tensor:
    """The quantized DeiT forward of PSAQ-ViT's vit_quant.py, written out on timm's weights. With
    ``ranges`` empty it records each site's min/max (calibration); then it quantizes with them.
    Ranges include 0, as ours do (PSAQ's do not widen them; on these sites they hold 0 anyway)."""
    w_bits, a_bits = bits
    calibrating = ranges.get("_calibrating", False)  # PSAQ-ViT calibrates with quant=False everywhere

    def qw(w: torch.Tensor) -> torch.Tensor:
        return w if calibrating else _weight(w, w_bits)

    def qa(name: str, t: torch.Tensor) -> torch.Tensor:
        if calibrating:
            lo, hi = ranges.get(name, (float("inf"), float("-inf")))
            ranges[name] = (min(lo, t.min().item(), 0.0), max(hi, t.max().item(), 0.0))
            return t
        return _act(t, *ranges[name], a_bits)

    def lin(layer: nn.Linear, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(t, qw(layer.weight), layer.bias)

    B = x.shape[0]
    x = qa("input", x)
    p = m.patch_embed.proj
    x = nn.functional.conv2d(x, qw(p.weight), p.bias, p.stride).flatten(2).transpose(1, 2)
    x = qa("patch", x)
    x = qa("embed", torch.cat([m.cls_token.expand(B, -1, -1), x], 1))
    x = qa("sum", x + qa("pos", m.pos_embed))
    for i, blk in enumerate(m.blocks):
        a, h = blk.attn, blk.attn.num_heads
        t = qa(f"{i}.qkv", lin(a.qkv, qa(f"{i}.norm1", blk.norm1(x))))
        q, k, v = t.reshape(B, -1, 3, h, t.shape[-1] // 3 // h).permute(2, 0, 3, 1, 4)
        attn = qa(f"{i}.scores", (q @ k.transpose(-2, -1)) * a.scale).softmax(-1)
        t = qa(f"{i}.av", (attn @ v).transpose(1, 2).reshape(B, -1, t.shape[-1] // 3))
        x = qa(f"{i}.res1", x + qa(f"{i}.proj", lin(a.proj, t)))
        t = qa(f"{i}.act", blk.mlp.act(lin(blk.mlp.fc1, qa(f"{i}.norm2", blk.norm2(x)))))
        x = qa(f"{i}.res2", x + qa(f"{i}.fc2", lin(blk.mlp.fc2, t)))
    x = qa("final", m.norm(x)[:, 0])
    return qa("logits", lin(m.head, x))


@pytest.mark.parametrize("bits", [(4, 4), (8, 8)])
def test_reference_layout_equals_psaq_forward(deit, bits):
    torch.manual_seed(0)
    calib, x = torch.randn(16, 3, 32, 32), torch.randn(8, 3, 32, 32)
    ranges: dict = {"_calibrating": True}
    with torch.no_grad():
        for chunk in calib.split(8):
            psaq_deit_forward(deit, chunk, ranges, bits)
        ranges.pop("_calibrating")
        expected = psaq_deit_forward(deit, x, ranges, bits)
        qmodel = calibrate(quantize_model(deit, QuantConfig(BitPlan(*bits))), calib.split(8))
        got = qmodel(x)
    # same grid; float rounding of (q·s)·k vs (q·k)·s may flip a rare value by one step, and at
    # 4 bits one flip moves its downstream logits by a step or two (CPU-dependent): so most
    # logits must be identical and the rest close, never a different grid
    diff = (got - expected).abs()
    assert (diff < 1e-4).float().mean() > 0.85
    assert diff.mean() < 0.02 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_bops_counts_every_layer_at_its_input_bits(deit):
    qmodel = calibrate(quantize_model(deit, QuantConfig(BitPlan(8, 8))), [torch.randn(2, 3, 32, 32)])
    macs = 64 * 96 * 48  # patch embedding: 8x8 patches, 96 channels, 3x4x4 inputs
    macs += 4 * (65 * 96 * 288 + 65 * 96 * 96 + 2 * 65 * 96 * 384)  # per block qkv, proj, fc1, fc2
    macs += 96 * 10  # head
    report = compression_report(qmodel)
    assert report["gbops"] == pytest.approx(macs * 64 / 1e9)
    assert report["mean_a_bits"] == report["mean_a_bits_weighted"] == 8


def test_unknown_family_fails_with_one_line():
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ValueError, match="reference layout has no adapter for Custom"):
        quantize_model(Custom(), QuantConfig())


def test_layerscale_branch_quantized_as_if_folded():
    """A LayerScale block (DINOv2) quantizes each branch after its scale: the same model as one
    with γ folded into proj and fc2 (per-channel symmetric weights scale with γ exactly)."""
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    scaled = timm.models.VisionTransformer(**args, init_values=0.5).eval()
    for p in (scaled.head.weight, scaled.cls_token, scaled.pos_embed):  # timm initialises these near zero
        p.data.normal_()
    for block in scaled.blocks:
        for ls in (block.ls1, block.ls2):
            ls.gamma.data.uniform_(0.05, 2.0).mul_(torch.randint(0, 2, (32,)) * 2 - 1)  # signs too
    folded = timm.models.VisionTransformer(**args).eval()
    state = scaled.state_dict()
    for i in range(2):
        for ls, layer in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
            gamma = state.pop(f"blocks.{i}.{ls}.gamma")
            state[f"blocks.{i}.{layer}.weight"] = gamma[:, None] * state[f"blocks.{i}.{layer}.weight"]
            state[f"blocks.{i}.{layer}.bias"] = gamma * state[f"blocks.{i}.{layer}.bias"]
    folded.load_state_dict(state)
    names = activation_names(quantize_model(scaled, QuantConfig()))
    assert {"blocks.0.ls1.out", "blocks.0.ls2.out"} <= names
    assert not {"blocks.0.attn.proj.out", "blocks.0.mlp.fc2.out"} & names
    assert len(names) == 7 + 2 * 10
    calib, x = torch.randn(16, 3, 32, 32), torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        got, expected = (calibrate(quantize_model(m, QuantConfig(BitPlan(4, 4))), calib.split(8))(x)
                         for m in (scaled, folded))
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).all()
