"""ONNX QDQ export of a fake-quantized model: QuantizeLinear/DequantizeLinear where its quantizers are.

Every active activation quantizer becomes a QuantizeLinear -> DequantizeLinear pair (per tensor,
uint8 for affine grids, int8 for symmetric ones) and every weight an integer initializer behind a
per-channel DequantizeLinear; the values are the fake quantizer's, so an ONNX Runtime session that
fuses the pairs into integer kernels (QGemm, QLinearConv, ...) computes on the same integers as
the fake-quant forward. What ONNX cannot express as integers is refused with one line instead of
being exported in float: activations at other than 8 bits (no integer kernel takes them), weights
above 8 bits, and the log2 softmax grid.

Weights below 8 bits are stored in int8 (their values lie on the b-bit grid, so nothing is
emulated, only the container is wider): ONNX has INT4 since opset 21, but torch's exporter cannot
write an INT4 initializer (torch.int4 tensors have no copy kernel in torch 2.14). Nodes carry the
quantizer's name in their metadata (``clamp.site``), so a graph can be checked site by site.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clamp.quant.modules import QuantConv2d, QuantLinear
from clamp.quant.quantizer import FP_BITS, Log2Quantizer, Quantizer, qrange
from clamp.quant.wrap import is_weight, quantizers

OPSET = 21  # QuantizeLinear/DequantizeLinear with per-axis scales and zero points
SITE = "clamp.site"  # node metadata key: the quantizer a Q or DQ node stands for
ACT_BITS = 8  # the activation width of ONNX Runtime's integer kernels


def check_exportable(model: nn.Module) -> None:
    """One line naming the first quantizer that has no integer form in ONNX; nothing if all do."""
    for q in quantizers(model):
        if q.bits == FP_BITS:  # left in FP: exported as float
            continue
        if q.state != "quant":
            raise ValueError(f"quantizer {q.name} is not frozen: calibrate the model before exporting it")
        if isinstance(q, Log2Quantizer):
            raise ValueError(f"{q.name} uses the log2 softmax grid, which ONNX QuantizeLinear cannot express: "
                             "export a cell with softmax_quant=uniform")
        if is_weight(q):
            if q.bits > 8:
                raise ValueError(f"weight {q.name} has {q.bits} bits, more than int8 holds: export a cell with "
                                 "weights of 8 bits or fewer")
        elif q.bits != ACT_BITS:
            raise ValueError(f"activation {q.name} has {q.bits} bits: ONNX Runtime's integer kernels take "
                             f"{ACT_BITS}-bit activations only, so export a cell with 8-bit activations (W8A8, W4A8)")
        elif q.axis is not None:
            raise ValueError(f"activation {q.name} is quantized per channel: the export expects per-tensor activations")


def _container(q: Quantizer) -> torch.dtype:
    return torch.int8 if q.symmetric else torch.uint8


def _node(op: str, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype: torch.dtype,
          site: str, axis: int | None = None) -> torch.Tensor:
    return torch.onnx.ops.symbolic(op, [x, scale, zero_point], {} if axis is None else {"axis": axis},
                                   dtype=dtype, shape=x.shape, version=OPSET, metadata_props={SITE: site})


def _export_quantizer(q: Quantizer) -> Callable[[torch.Tensor], torch.Tensor]:
    """QuantizeLinear -> DequantizeLinear with the quantizer's effective scale (search multiplier
    folded in) and zero point."""
    scale = (q.scale * q.mult).detach().float().reshape(())
    zero_point = q.zero_point.detach().reshape(()).to(_container(q))

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not q.active:
            return x
        quant = _node("QuantizeLinear", x, scale, zero_point, zero_point.dtype, q.name)
        return _node("DequantizeLinear", quant, scale, zero_point, x.dtype, q.name)
    return forward


def integer_weight(layer: QuantLinear | QuantConv2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(integers, per-channel scale, zero points) of a layer's quantized weight: the integers are
    clamp(round(w / s) + z, qmin, qmax), exactly the grid points its fake quantizer returns."""
    q = layer.w_quant
    qmin, qmax = qrange(q.bits, q.symmetric)
    scale = (q.scale * q.mult).detach().float().reshape(-1)
    zero_point = q.zero_point.detach().float().reshape(-1).expand_as(scale)
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    ints = torch.clamp(torch.round(layer.weight.detach().float() / scale.reshape(shape)) + zero_point.reshape(shape),
                       qmin, qmax)
    return ints, scale, zero_point


def _export_layer(layer: QuantLinear | QuantConv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer with its weight as integers behind a per-channel DequantizeLinear. A Linear's
    weight is stored transposed (in, out) with its channel axis 1, so that the DequantizeLinear
    feeds the MatMul directly, the pattern ONNX Runtime fuses."""
    q = layer.w_quant
    linear = isinstance(layer, QuantLinear)
    if q.active:
        ints, scale, zero_point = integer_weight(layer)
        dtype = _container(q)
        ints = (ints.t() if linear else ints).contiguous().to(dtype)
        zero_point = zero_point.to(dtype)
    else:
        fp = layer.weight.detach().t() if linear else layer.weight.detach()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if layer.a_quant is not None:
            x = layer.a_quant(x)
        # built while tracing, so that it is a node and not a constant folded from a placeholder
        w = _node("DequantizeLinear", ints, scale, zero_point, torch.float32, q.name, axis=1 if linear else 0) \
            if q.active else fp
        if linear:
            out = torch.matmul(x, w)
            return out if layer.bias is None else out + layer.bias
        return F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return forward


@contextlib.contextmanager
def export_forwards(model: nn.Module) -> Iterator[None]:
    """Within: the quantizers and quantized layers of ``model`` trace as QDQ nodes (their eager
    outputs are placeholders, good for tracing only)."""
    patched = []
    for module in model.modules():
        if isinstance(module, Quantizer) and not is_weight(module):  # weights: their layer's DequantizeLinear
            module.forward = _export_quantizer(module)
        elif isinstance(module, (QuantLinear, QuantConv2d)):
            if isinstance(module, QuantConv2d) and module.padding_mode != "zeros":
                raise ValueError(f"{module.w_quant.name}: only zero-padded convolutions are exported")
            module.forward = _export_layer(module)
        else:
            continue
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Write ``model`` (fake-quantized, frozen, or plain FP) as ONNX with a dynamic batch axis; the
    quantized one with QDQ nodes at its quantizer sites."""
    check_exportable(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    # the exporter reports each of its steps on stdout and its optimiser every rewrite in the log
    quiet = logging.getLogger("onnxscript"), logging.getLogger("onnx_ir")
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.WARNING)
    try:
        with torch.no_grad(), export_forwards(model), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(model, (example[:2],), dynamo=True, opset_version=OPSET, input_names=["images"],
                                        output_names=["out"], dynamic_shapes=({0: batch},), verbose=False)
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)
    tmp = path.with_name(path.name + ".tmp")
    program.save(str(tmp), external_data=False)
    tmp.replace(path)
    return path
