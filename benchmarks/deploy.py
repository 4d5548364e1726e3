"""The deployment check of a stored cell: its quantized model as ONNX QDQ on ONNX Runtime's integer kernels.

The cell's quantized model is rebuilt from its FP weights and stored quantizer state, exported
(clamp/quant/qdq.py) beside the FP32 model, and both run in ONNX Runtime CPU sessions with every
graph optimisation on (QDQ pairs fuse into integer kernels there). Reported: top-1 of the integer
session and of the fake-quant model on the same images, their difference, which quantizer sites
fused into integer ops and which stayed as float quantize-dequantize, and the median latency per
batch (1 and 32 images) of the integer and FP32 sessions under the same session options. The
check is stored under ``<results>/deploy/<task>/<key>.json``; the ONNX files go under the personal
results folder, never into results/.
"""
from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.cell import Cell
from benchmarks.provenance import commit
from benchmarks.store import ResultStore
from clamp.io import atomic_write_text, cache_dir
from clamp.quant import quantize_model, quantizers
from clamp.quant.compression import load_quant_state
from clamp.quant.qdq import ACT_BITS, SITE, export_onnx
from tasks import TASKS, make_task

# ONNX Runtime ops that compute on integers (the fused forms of QDQ patterns)
INTEGER_OPS = {"QGemm", "QLinearMatMul", "QLinearConv", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger",
               "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
               "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
               "QAttention", "DynamicQuantizeMatMul", "MatMulNBits", "NhwcQLinearConv"}
FLOAT_COMPUTE = {"MatMul", "Gemm", "Conv", "FusedMatMul", "FusedGemm", "FusedConv", "NchwcConv"}


@dataclass
class DeployOptions:
    """How a deployment check runs; recorded beside its numbers."""

    n_images: int = 1000  # evaluation images (the first of the task's fixed random test subset)
    threads: int = 2  # ONNX Runtime intra-op threads, both sessions
    repeats: int = 20  # timed runs per batch size (after 3 warm-up runs); the median is reported
    jitter: float = 1e-6  # std of the input noise of the fake-quant reference run (Jittered)
    batches: tuple[int, ...] = (1, 32)


def refusal(cell: Cell) -> str | None:
    """Why a cell cannot run on integer kernels, said before it is computed (None: it can)."""
    if cell.task != "classification":
        return f"the deployment check covers classification cells, not {cell.task}"
    if cell.a_bits != ACT_BITS or cell.w_bits > 8:
        return (f"{cell.precision} has no integer kernel in ONNX Runtime, which takes 8-bit activations and "
                "weights up to 8 bits: export W8A8 or W4A8 cells")
    if cell.quant_options.get("softmax_quant", "uniform") != "uniform":
        return "the log2 softmax grid has no ONNX QuantizeLinear form: export a cell with softmax_quant=uniform"
    return None


def find_record(stores: list[ResultStore], key: str) -> tuple[dict[str, Any], ResultStore]:
    """The good record of cell ``key`` in the first of ``stores`` that has it; one line if none has."""
    for store in stores:
        for task in TASKS:
            record = store.read(store.root / "cells" / task / f"{key}.json", key)
            if record and record["status"] == "ok":
                return record, store
    raise ValueError(f"no finished cell {key!r} in {' or '.join(str(s.root) for s in stores)}: pass a key from "
                     "the config_key column of results/<task>.csv (or --results-dir for another folder)")


def load(store: ResultStore, record: dict[str, Any]) -> dict[str, Any] | None:
    """The deployment check of ``record``, if one was made of this very record (same timestamp)."""
    path = store.deploy_path(record["config"]["task"], record["key"])
    if not path.is_file():
        return None
    check = json.loads(path.read_text())
    return check if check.get("record_timestamp") == record.get("timestamp") else None


def rebuild(record: dict[str, Any], store: ResultStore, n_eval: int | None = None, data_root: str | None = None):
    """(task, FP model, quantized model) of a stored cell, on the CPU: the quantized model is the
    FP model wrapped as the cell was and given its stored quantizer state."""
    cell = Cell.from_config(record["config"])
    why = refusal(cell)
    if why:
        raise ValueError(f"cell {cell.key}: {why}")
    if cell.weights:
        raise ValueError(f"cell {cell.key} ran on other weights than the published ones ({cell.weights}): "
                         "export a cell of the suite's own weights")
    task = make_task(cell.task, cell.model, n_eval=n_eval or cell.n_eval, device="cpu", data_root=data_root,
                     **cell.task_options)
    if task.weights_id != record["weights_id"]:
        raise ValueError(f"the weights of {cell.model} here ({task.weights_id}) are not those of cell {cell.key} "
                         f"({record['weights_id']}): restore the model's weights before exporting it")
    from safetensors.torch import load_file
    state_file = store.state_path(cell.task, cell.key)
    if not state_file.is_file():
        raise ValueError(f"cell {cell.key} has no stored quantizer state ({state_file.name}): recompute it")
    model = task.build_model().eval()
    qnet = quantize_model(task.backbone(model), cell.quant_config(task.quant_exclude))
    load_quant_state(qnet, load_file(str(state_file)))
    return task, model, task.replace_backbone(model, qnet).eval()


class OrtModel(nn.Module):
    """An ONNX Runtime session behind an nn.Module, so that the task's own evaluator scores it."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        self.input = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.cpu().numpy()})[0])


class Jittered(nn.Module):
    """The model on its input plus Gaussian noise of std ``sigma`` (a fixed seed): how far the fake-quant
    metric itself moves under a perturbation far below any image's precision, the yardstick for the
    integer session's difference. Grids whose step is large where it matters (scores before the
    softmax, say) turn one flipped rounding into another prediction."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.sigma * torch.randn(x.shape, generator=self.generator))


def session(path: Path, threads: int, optimized: Path | None = None):
    """A CPU session with every graph optimisation on (optionally saving the optimised graph)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # the warning that an optimised graph is CPU-specific is expected here
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fusion(exported: Path, optimized: Path) -> dict[str, Any]:
    """Per quantizer site of the exported graph: fused (no Q or DQ node of it is left: integer
    kernels consume and produce it), partial (one side fused) or float (its quantize-dequantize
    runs as float ops); with the ops of the optimised graph by type."""
    import onnx
    sites: dict[str, set[str]] = {}
    for node in onnx.load(str(exported)).graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        if SITE in props:
            sites.setdefault(props[SITE], set()).add(node.name)
    graph = onnx.load(str(optimized)).graph
    left = {n.name for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    ops = Counter(n.op_type for n in graph.node)
    status = {site: "fused" if not names & left else "float" if names <= left else "partial"
              for site, names in sites.items()}
    counts = Counter(status.values())
    return {"sites": len(sites), "fused": counts["fused"], "partial": counts["partial"], "float": counts["float"],
            "float_sites": sorted(s for s, v in status.items() if v == "float"),
            "integer_ops": sum(n for op, n in ops.items() if op in INTEGER_OPS),
            "float_matmuls": sum(n for op, n in ops.items() if op in FLOAT_COMPUTE),
            "ops": dict(sorted(ops.items()))}


def latency_ms(model: OrtModel, images: torch.Tensor, repeats: int) -> float:
    """Median wall time of one run on ``images``, in milliseconds, after 3 warm-up runs."""
    x = {model.input: images.numpy()}
    for _ in range(3):
        model.session.run(None, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.session.run(None, x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def check(record: dict[str, Any], store: ResultStore, options: DeployOptions | None = None,
          data_root: str | None = None) -> dict[str, Any]:
    """Export the cell, run both sessions, store and return the check."""
    import onnxruntime as ort
    options = options or DeployOptions()
    start = time.time()
    task, model, qmodel = rebuild(record, store, options.n_images, data_root)
    folder = cache_dir("results") / "exports" / record["key"]
    images = task.test_images(2)
    int_path = export_onnx(qmodel, images, folder / "int.onnx")
    fp_path = export_onnx(model, images, folder / "fp32.onnx")
    int_model = OrtModel(session(int_path, options.threads, folder / "int.optimized.onnx"))
    fp_model = OrtModel(session(fp_path, options.threads))
    metric = task.metric
    fake, integer, fp32, jittered = (task.evaluate(m)[metric] for m in
                                     (qmodel, int_model, fp_model, Jittered(qmodel, options.jitter)))
    batch = task.test_images(max(options.batches))
    latency = {kind: {f"b{b}": round(latency_ms(m, batch[:b], options.repeats), 3) for b in options.batches}
               for kind, m in (("int", int_model), ("fp32", fp_model))}
    n_sites = sum(q.active for q in quantizers(qmodel))
    out = {
        "key": record["key"], "record_timestamp": record.get("timestamp"), "metric": metric,
        "int": integer, "fake": fake, "int_vs_fake": integer - fake, "fp32_onnx": fp32,
        "fake_jittered": jittered, "jitter_vs_fake": jittered - fake,
        "latency_ms": latency,
        "speedup": {b: latency["fp32"][b] / latency["int"][b] for b in latency["int"]},
        "fusion": fusion(int_path, folder / "int.optimized.onnx"), "quantizer_sites": n_sites,
        "options": asdict(options), "onnxruntime": ort.__version__, "commit": commit(),
        "wall_s": round(time.time() - start, 2), "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "onnx": {"int": str(int_path), "fp32": str(fp_path)},
    }
    path = store.deploy_path(record["config"]["task"], record["key"])
    atomic_write_text(path, json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


def summary(out: dict[str, Any]) -> str:
    """Two lines for the terminal."""
    f, lat = out["fusion"], out["latency_ms"]
    speed = ", ".join(f"batch {b[1:]}: {lat['int'][b]:.2f} ms vs {lat['fp32'][b]:.2f} ms FP32 "
                      f"({out['speedup'][b]:.2f}x)" for b in lat["int"])
    return (f"{out['key']}: {out['metric']} {out['int']:.2f} on ONNX Runtime's integer kernels, "
            f"{out['fake']:.2f} fake-quant ({out['int_vs_fake']:+.2f}; input noise of std {out['options']['jitter']:g} "
            f"moves fake-quant by {out['jitter_vs_fake']:+.2f}) on {out['options']['n_images']} images; "
            f"{f['fused']} of {f['sites']} sites fused into integer ops, {f['partial']} partly, {f['float']} float\n"
            f"  latency ({out['options']['threads']} threads) {speed}")
