"""Fake quantization shared by every method: quantizers, observers, modules, wrapping, plans."""
from clamp.quant.compression import compression_report, quant_state
from clamp.quant.plan import BitPlan
from clamp.quant.quantizer import FP_BITS, Log2Quantizer, Quantizer, check_bits, fake_quant
from clamp.quant.wrap import (
    QuantConfig,
    calibrate,
    is_weight,
    quant_layers,
    quantize_model,
    quantizers,
    recalibrate_activations,
)

__all__ = [
           "FP_BITS",
           "BitPlan",
           "Log2Quantizer",
           "QuantConfig",
           "Quantizer",
           "calibrate",
           "check_bits",
           "compression_report",
           "fake_quant",
           "is_weight",
           "quant_layers",
           "quant_state",
           "quantize_model",
           "quantizers",
           "recalibrate_activations",
]
