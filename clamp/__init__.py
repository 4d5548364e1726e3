"""CLAMP-ViT: contrastive data-free learning for adaptive post-training quantization of ViTs."""
