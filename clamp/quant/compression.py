"""Compression accounting: what a bit-width plan costs in storage and in bit operations, and
the quantizer state that a record keeps beside it."""
from __future__ import annotations

import torch
from torch import nn

from clamp.quant.quantizer import FP_BITS, check_bits
from clamp.quant.wrap import is_weight, quant_layers, quantizers


def compression_report(model: nn.Module) -> dict[str, float]:
    """Compression ratio, mean bits, size and BOPS of a (fake-)quantized model.

    compression_ratio = 32 * (number of parameters) / (sum of bits over all parameters), where
    parameters that are not quantized (biases, norms, embeddings, FP layers) count at 32 bits.
    Mean bits come two ways: ``mean_w_bits`` weighted by parameters and ``mean_w_bits_plain``
    the plain mean over quantized layers; ``mean_a_bits`` the plain mean over activation
    quantizers (how papers write W4.9/A6.2) and ``mean_a_bits_weighted`` weighted by the
    elements each quantizes per image. ``gbops`` = sum over quantized Linear/Conv2d layers of
    MACs per image x weight bits x bits of the input's quantizer (32 for an FP input), in 1e9;
    it needs the costs probed by ``calibrate`` and is absent without them.
    """
    layers = list(quant_layers(model))
    quantized = {id(m.weight): m.w_quant.bits for m in layers}
    n_params = bits_total = 0
    layer_params = layer_bits = 0
    for p in model.parameters():
        bits = quantized.get(id(p), FP_BITS)
        n_params += p.numel()
        bits_total += p.numel() * bits
        if id(p) in quantized:
            layer_params += p.numel()
            layer_bits += p.numel() * bits
    acts = [q for q in quantizers(model) if not is_weight(q)]
    report = {
        "compression_ratio": FP_BITS * n_params / bits_total,
        "mean_w_bits": layer_bits / layer_params if layer_params else float(FP_BITS),
        "mean_w_bits_plain": sum(m.w_quant.bits for m in layers) / len(layers) if layers else float(FP_BITS),
        "mean_a_bits": sum(q.bits for q in acts) / len(acts) if acts else float(FP_BITS),
        "size_mb": bits_total / 8 / 1e6,
        "n_params": n_params,
    }
    if acts and all(q.numel for q in acts):
        report["mean_a_bits_weighted"] = sum(q.bits * q.numel for q in acts) / sum(q.numel for q in acts)
    if layers and all(m.macs for m in layers):
        a_bits = {q.name: q.bits for q in acts}
        report["gbops"] = sum(m.macs * m.w_quant.bits * a_bits.get(m.feeder, FP_BITS) for m in layers) / 1e9
    return report


def quant_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every quantizer's bits, effective scale (search multiplier included) and zero point, by
    quantizer name: enough to inspect a result's plan and to rebuild its quantized model from
    the FP weights."""
    state = {}
    for q in quantizers(model):
        state[f"{q.name}.bits"] = torch.tensor(q.bits)
        if q.active:
            mult = q.mult.detach() if isinstance(q.mult, torch.Tensor) else q.mult
            state[f"{q.name}.scale"] = (q.scale * mult).detach().float().cpu().contiguous()
            state[f"{q.name}.zero_point"] = q.zero_point.detach().float().cpu().contiguous()
    return state


def load_quant_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Give the quantizers of ``model`` (wrapped like the model ``state`` came from) the stored bits,
    scales and zero points, frozen: the quantized model of a record, rebuilt from its FP weights."""
    names = {q.name for q in quantizers(model)}
    stored = {k.removesuffix(".bits") for k in state if k.endswith(".bits")}
    if names != stored:
        diff = sorted(names ^ stored)
        raise ValueError(f"the stored quantizer state does not fit this model ({len(diff)} quantizers differ, "
                         f"e.g. {diff[0]}): rebuild it with the cell's own model and quantizer options")
    for q in quantizers(model):
        q.reset()
        q.bits = check_bits(int(state[f"{q.name}.bits"]))
        if q.bits != FP_BITS:
            q.scale = state[f"{q.name}.scale"].to(q.scale.device)
            q.zero_point = state[f"{q.name}.zero_point"].to(q.zero_point.device)
        q.state = "quant"
        q.version += 1
    return model
