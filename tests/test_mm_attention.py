"""The mm attention adapters: same maths as the framework's modules, and the MHSA output put
back on its patch grid, checked against the framework's own un-windowing."""
import pytest
import torch
from mmcv.cnn.bricks.transformer import MultiheadAttention
from mmdet.models.backbones.swin import SwinTransformer as DetSwin
from mmseg.models.backbones.swin import SwinTransformer as SegSwin
from mmseg.models.backbones.vit import VisionTransformer

from clamp.generate.features import MHSACapture, is_windowed, patch_tokens, transformer_blocks
from clamp.method import block_groups
from clamp.quant import BitPlan, QuantConfig, calibrate, quantize_model
from tasks.families.mmseg_vit import SelfAttention, rewrite_attention


def mm_swin(cls):
    torch.manual_seed(0)
    net = cls(embed_dims=16, depths=(2, 2), num_heads=(1, 2), window_size=4, out_indices=(0, 1))
    net.eval()  # mm backbones override train() and return None
    return net


@pytest.fixture
def mm_vit():
    torch.manual_seed(0)
    net = VisionTransformer(img_size=(32, 32), patch_size=8, embed_dims=24, num_layers=2, num_heads=3,
                            out_indices=(0, 1))
    net.eval()
    return net


def test_self_attention_rewrite_is_the_same_function(mm_vit):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = mm_vit(x)
        out = rewrite_attention(mm_vit)(x)
    assert not any(isinstance(m, MultiheadAttention) for m in mm_vit.modules())
    assert sum(isinstance(m, SelfAttention) for m in mm_vit.modules()) == 2
    for a, b in zip(ref, out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: mm_swin(DetSwin), lambda: mm_swin(SegSwin)], ids=["mmdet", "mmseg"])
def test_swin_mhsa_grid_matches_shift_window_msa(make):
    """proj(grid) must equal what ShiftWindowMSA itself returns after un-windowing and un-shifting
    (drop-path is the identity in eval): a 20x20 map pads to 5x5 windows of 4, shifted by 2."""
    net = make()
    x = torch.randn(2, 3, 80, 80)
    outs = {}
    hooks = [b.attn.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
             for i, (_, b) in enumerate(transformer_blocks(net))]
    with torch.no_grad(), MHSACapture(net) as capture:
        net(x)
    for h in hooks:
        h.remove()
    assert is_windowed(net) and len(capture.outputs) == 4
    for i, (o, (_, block)) in enumerate(zip(capture.outputs, transformer_blocks(net), strict=True)):
        b, h, w, c = o.grid.shape
        assert (h, w) == ((20, 20) if i < 2 else (10, 10))
        torch.testing.assert_close(block.attn.w_msa.proj(o.grid).reshape(b, h * w, c), outs[i])
    assert transformer_blocks(net)[1][1].attn.shift_size == 2  # the shifted case is covered


def test_vit_mhsa_grid_drops_the_class_token(mm_vit):
    """SelfAttention returns identity + proj(MHSA output): proj(grid) is that minus the block input."""
    net = rewrite_attention(mm_vit)
    block = transformer_blocks(net)[0][1]
    seen = {}
    hooks = [block.register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0])),
             block.attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o))]
    with torch.no_grad(), MHSACapture(net) as capture:
        net(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    grid = capture.outputs[0].grid
    assert grid.shape == (2, 4, 4, 24) and seen["in"].shape == (2, 17, 24)
    expected = (seen["attn"] - seen["in"])[:, 1:]
    torch.testing.assert_close(block.attn.proj(grid).reshape(2, 16, 24), expected)
    assert patch_tokens(net, seen["in"]).shape == (2, 16, 24)


REFERENCE_BLOCK = ["norm1.out", "attn.qkv.out", "attn.scores", "attn.av", "attn.proj.out", "res1", "norm2.out",
                   "ffn.act.out", "ffn.fc2.out", "res2"]


@pytest.mark.parametrize("layout", ["reference", "inputs"])
@pytest.mark.parametrize("make", [lambda: mm_swin(DetSwin), "vit"], ids=["mm-swin", "mm-vit"])
def test_w16a16_quantized_backbone_matches_fp(make, layout, mm_vit):
    net = rewrite_attention(mm_vit) if make == "vit" else make()
    x = torch.randn(4, 3, 32, 32)
    qnet = calibrate(quantize_model(net, QuantConfig(BitPlan(16, 16), layout=layout)), [x])
    with torch.no_grad():
        for a, b in zip(net(x), qnet(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
    names = {q.name for g in block_groups(qnet) for q in g[1]}
    block = "layers.0" if make == "vit" else "stages.0.blocks.0"
    attn = "layers.0.attn" if make == "vit" else "stages.0.blocks.0.attn.w_msa"
    if layout == "inputs":
        assert {f"{attn}.qk.a", f"{attn}.av.a", f"{attn}.qkv.weight", f"{attn}.proj.input"} <= names
        return
    sites = [s.replace("attn.", "attn.w_msa.") if make != "vit" else s for s in REFERENCE_BLOCK]
    assert {f"{block}.{s}" for s in sites} <= names
    assert {"patch_embed.input", "patch_embed.projection.out"} <= names
    if make == "vit":
        assert {"embed", "pos_embed", "pos_sum"} <= names
    else:
        assert {f"{attn}.table", f"{attn}.scores_bias", "stages.0.downsample.norm.out", "norm0.out"} <= names
