"""Layer-wise evolutionary search of quantization parameters and mixed-precision bit allocation."""
