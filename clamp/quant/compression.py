"""Compression accounting: what a bit-width plan costs in storage."""
from __future__ import annotations

from torch import nn

from clamp.quant.quantizer import FP_BITS
from clamp.quant.wrap import is_weight, quant_layers, quantizers


def compression_report(model: nn.Module) -> dict[str, float]:
    """Compression ratio, mean bits and size of a (fake-)quantized model.

    compression_ratio = 32 * (number of parameters) / (sum of bits over all parameters), where
    parameters that are not quantized (biases, norms, embeddings, FP layers) count at 32 bits.
    mean_w_bits is parameter-weighted over the quantizable layers' weights; mean_a_bits is the
    plain mean over activation quantizers, the way the paper reports W4.9/A6.2.
    """
    quantized = {id(m.weight): m.w_quant.bits for m in quant_layers(model)}
    n_params = bits_total = 0
    layer_params = layer_bits = 0
    for p in model.parameters():
        bits = quantized.get(id(p), FP_BITS)
        n_params += p.numel()
        bits_total += p.numel() * bits
        if id(p) in quantized:
            layer_params += p.numel()
            layer_bits += p.numel() * bits
    a_bits = [q.bits for q in quantizers(model) if not is_weight(q)]
    return {
        "compression_ratio": FP_BITS * n_params / bits_total,
        "mean_w_bits": layer_bits / layer_params if layer_params else float(FP_BITS),
        "mean_a_bits": sum(a_bits) / len(a_bits) if a_bits else float(FP_BITS),
        "size_mb": bits_total / 8 / 1e6,
        "n_params": n_params,
    }
