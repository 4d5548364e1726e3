"""Synthetic-image generation: the optimisation loop, patch-level losses and image priors."""
