"""Baseline PTQ methods behind the same interface as CLAMP-ViT."""
