"""From fake quantization to integers: ONNX QDQ export and ONNX Runtime's integer kernels."""
import json

import onnx
import pytest
import torch
from torch import nn

from benchmarks import deploy, fingerprint, leaderboard, provenance
from benchmarks.cell import Cell
from benchmarks.cli import main
from benchmarks.runner import RunOptions, run_cells
from benchmarks.store import ResultStore
from clamp.quant import BitPlan, QuantConfig, calibrate, quantize_model, quantizers
from clamp.quant.modules import QuantLinear
from clamp.quant.qdq import SITE, check_exportable, export_onnx, integer_weight
from clamp.quant.quantizer import Quantizer

DEIT = "micro_deit_patch4_32"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A results folder of a clean commit whose canaries are not the point here."""
    monkeypatch.setattr(provenance, "commit", lambda: "0123456789ab")
    monkeypatch.setattr(fingerprint, "run_canaries",
                        lambda root, paths: [{"path": p, "error": "not run"} for p in paths])
    return ResultStore(tmp_path / "results")


def test_integer_weights_are_the_fake_quantizers_grid_points():
    """Hand-computed: 4-bit full-range symmetric weights, s = max|w| / 7.5 per output channel."""
    fp = nn.Linear(3, 2, bias=False)
    fp.weight.data = torch.tensor([[0.75, -0.3, 0.1], [-1.5, 0.2, 0.05]])
    layer = QuantLinear(fp, Quantizer("l.weight", 4, axis=0, symmetric=True, full_range=True))
    layer.w_quant.observer.observe(fp.weight)
    layer.w_quant.freeze()
    ints, scale, zero = integer_weight(layer)
    assert torch.allclose(scale, torch.tensor([0.1, 0.2]))
    # 0.75/0.1 = 7.5 -> 8, clamped to 7; -0.3/0.1 = -3; 0.1/0.1 = 1; -1.5/0.2 = -7.5 -> -8 (half to even); 1; 0.25 -> 0
    assert ints.tolist() == [[7, -3, 1], [-8, 1, 0]] and not zero.any()
    assert torch.equal((ints - zero[:, None]) * scale[:, None], layer.quant_weight())


def test_what_has_no_integer_form_is_refused_in_one_line(tiny_vit):
    x = torch.randn(4, 3, 32, 32)
    for config, match in ((QuantConfig(BitPlan(4, 4)), "activation .* has 4 bits"),
                          (QuantConfig(BitPlan(8, 8), layout="inputs", softmax_quant="log2"), "log2"),
                          (QuantConfig(BitPlan(16, 8)), "weight .* 16 bits")):
        qnet = calibrate(quantize_model(tiny_vit, config), [x])
        with pytest.raises(ValueError, match=match):
            check_exportable(qnet)
    with pytest.raises(ValueError, match="is not frozen: calibrate"):
        check_exportable(quantize_model(tiny_vit, QuantConfig(BitPlan(8, 8))))
    assert "W8A8 or W4A8" in deploy.refusal(Cell("classification", DEIT, "real", 4, 4))
    assert "classification" in deploy.refusal(Cell("detection", "micro_mask-rcnn_swin_fmnist", "real", 8, 8))
    assert deploy.refusal(Cell("classification", DEIT, "real", 4, 8)) is None


def test_every_quantizer_site_is_a_qdq_pair_and_ort_computes_the_fake_quant_values(tiny_swin, tmp_path):
    """Swin at W4/A8: every active activation quantizer is one QuantizeLinear + DequantizeLinear and
    every weight one DequantizeLinear of an integer initializer; ONNX Runtime without graph rewrites
    returns the fake-quant logits up to float rounding."""
    import onnxruntime as ort
    x = torch.randn(8, 3, 32, 32)
    qnet = calibrate(quantize_model(tiny_swin, QuantConfig(BitPlan(4, 8))), [x])
    path = export_onnx(qnet, x, tmp_path / "m.onnx")
    nodes = onnx.load(str(path)).graph.node
    sites = {}
    for node in nodes:
        props = {p.key: p.value for p in node.metadata_props}
        if SITE in props:
            sites.setdefault(props[SITE], []).append(node.op_type)
    acts = {q.name for q in quantizers(qnet) if q.active and not q.name.endswith(".weight")}
    weights = {q.name for q in quantizers(qnet) if q.active and q.name.endswith(".weight")}
    assert set(sites) == acts | weights
    assert all(sorted(sites[a]) == ["DequantizeLinear", "QuantizeLinear"] for a in acts)
    assert all(sites[w] == ["DequantizeLinear"] for w in weights)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = qnet(x)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.slow
def test_micro_deit_w8a8_on_integer_kernels_keeps_its_fake_quant_top1(store, tmp_path):
    """The issue's check: a W8/A8 micro DeiT cell exported, ONNX Runtime's top-1 with its graph
    optimisations on (QDQ fused into integer kernels) within 0.2 points of the fake-quant top-1 on
    the same 1,000 images; the rebuilt model is the cell's own (same top-1 as its record); the
    leaderboard shows the check."""
    cell = Cell("classification", DEIT, "gaussian", 8, 8, n_eval=1000)
    run_cells([cell], RunOptions(device="cpu"), store)
    record = store.load(cell)
    out = deploy.check(record, store, deploy.DeployOptions(n_images=1000, repeats=3))
    assert out["fake"] == record["quant"]["top1"]  # the stored state rebuilds the cell's quantized model
    assert round(abs(out["int_vs_fake"]), 6) <= 0.2, deploy.summary(out)  # two images of 1,000 at most
    assert out["fusion"]["integer_ops"] > 0 and out["fusion"]["sites"] == out["quantizer_sites"]
    assert all(v > 0 for kind in out["latency_ms"].values() for v in kind.values())
    assert json.loads(store.deploy_path("classification", cell.key).read_text())["int"] == out["int"]
    row = leaderboard.table(store, "classification").iloc[0]
    assert row["int_top1"] == round(out["int"], 3) and row["int_speedup"] == round(out["speedup"]["b32"], 3)


def test_a_bad_cell_key_is_one_line_and_run_export_refuses_before_work(store, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "0123456789abcdef", "--results-dir", str(store.root)])
    assert str(exit_.value).startswith("clamp-bench: error: no finished cell '0123456789abcdef'")
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--model", DEIT, "--method", "gaussian", "--w-bits", "4", "--a-bits", "4", "--export",
              "--results-dir", str(store.root)])
    assert "no integer kernel" in str(exit_.value)
    assert not (store.root / "cells").exists()  # refused before any work
