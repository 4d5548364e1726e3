"""Speed benchmarks (pytest-benchmark): `tox -e speed`, JSON under results/benchmarks/.

Targets (checked by reading the JSON, never asserted): the ONNX Runtime integer session of a W8/A8 micro
DeiT (QDQ fused into integer kernels, benchmarks/deploy.py) at least as fast as its FP32 session at batch 32;
fake-quant forward (reference layout) at most 1.5x the FP
forward of the same micro model and batch; a full CLAMP-ViT micro cell under 5 minutes on 2 cores; a
CLAMP-ViT generation step on the micro detector's Swin backbone (32 canvases of 128 px) under 0.35 s on 2 cores
(0.45 s with the gathered neighbourhood, which made the micro detection cell 11.9 minutes).
"""

import pytest
import torch

from baselines.psaq import PSAQViT
from clamp.generate.features import MHSACapture
from clamp.method import ClampViT, Search
from clamp.quant import BitPlan, QuantConfig, calibrate, quantize_model

BATCH = 32


@pytest.fixture(scope="module")
def batch(deit_task):
    return deit_task.real_images(BATCH, seed=0)


@pytest.fixture(scope="module")
def qnet(deit_task, batch):
    return calibrate(quantize_model(deit_task.build_model(), QuantConfig(BitPlan(4, 8))), [batch])


@pytest.mark.benchmark(group="forward")
def test_fp_forward(benchmark, deit_task, batch):
    net = deit_task.build_model()
    with torch.no_grad():
        benchmark(net, batch)


@pytest.mark.benchmark(group="forward")
def test_fake_quant_forward(benchmark, qnet, batch):
    with torch.no_grad():
        benchmark(qnet, batch)


def _one_step(benchmark, net, loss_fn, shape):
    x = torch.randn(shape, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.2, betas=(0.5, 0.9))

    def step():
        loss = loss_fn(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    benchmark(step)


@pytest.mark.benchmark(group="generation")
def test_psaq_generation_step(benchmark, deit_task):
    net, method = deit_task.build_model(), PSAQViT()
    labels = torch.randint(10, (BATCH,))
    with MHSACapture(net) as capture:
        def loss_fn(x):
            capture.clear()
            out = net(x)
            return method.prior_loss(x, capture, 100.0) + torch.nn.functional.cross_entropy(out, labels)
        _one_step(benchmark, net, loss_fn, (BATCH, 3, 32, 32))


@pytest.mark.benchmark(group="generation")
def test_clamp_generation_step(benchmark, deit_task):
    net, method = deit_task.build_model(), ClampViT()
    labels = torch.randint(10, (BATCH,))
    with MHSACapture(net) as capture:
        loss_fn = method.data_loss(deit_task, net, capture, labels, 100.0)
        _one_step(benchmark, net, lambda x: loss_fn(x)[0], (BATCH, 3, 32, 32))


@pytest.mark.benchmark(group="generation")
def test_clamp_generation_step_detection(benchmark):
    from tasks.detection import DetectionTask
    task = DetectionTask("micro_mask-rcnn_swin_fmnist", n_eval=300)
    net, method = task.backbone(task.build_model()), ClampViT()
    with MHSACapture(net) as capture:
        loss_fn = method.data_loss(task, net, capture, None, 100.0)
        _one_step(benchmark, net, lambda x: loss_fn(x)[0], (BATCH, *task.input_spec.shape))


@pytest.mark.benchmark(group="search")
def test_clamp_search_generation(benchmark, deit_task, qnet, batch):
    search = Search(ClampViT(), deit_task, deit_task.build_model(), qnet, batch, mixed=False, seed=0)
    _, group = search.groups[1]
    population = search.evo.initial(search.start(group), lambda c: search.fitness(1, c))
    benchmark(search.evo.cycle, population, search.bits.__getitem__, lambda c: search.fitness(1, c))


@pytest.mark.benchmark(group="cell")
def test_clamp_full_micro_cell(benchmark, deit_task):
    model = deit_task.build_model()
    benchmark.pedantic(ClampViT().quantize, args=(deit_task, model, QuantConfig(BitPlan(4, 8)), 0),
                       rounds=1, iterations=1)


@pytest.fixture(scope="module")
def ort_sessions(deit_task, batch, tmp_path_factory):
    """The micro DeiT as FP32 and as W8/A8 QDQ (real-data calibration), two threads each."""
    from benchmarks.deploy import OrtModel, session
    from clamp.quant.qdq import export_onnx
    folder = tmp_path_factory.mktemp("onnx")
    w8a8 = calibrate(quantize_model(deit_task.build_model(), QuantConfig(BitPlan(8, 8))), [batch])
    return {kind: OrtModel(session(export_onnx(net, batch, folder / f"{kind}.onnx"), threads=2))
            for kind, net in (("int8", w8a8), ("fp32", deit_task.build_model()))}


@pytest.mark.benchmark(group="onnxruntime")
@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_onnxruntime_session(benchmark, ort_sessions, batch, kind):
    model = ort_sessions[kind]
    x = {model.input: batch.numpy()}
    benchmark(model.session.run, None, x)
