"""A minimal third-party method: min-max calibration on uniform noise over the valid pixel range.

It lives in its own "package" (this folder, with a .dist-info declaring the entry point), so the
harness can only find it through the ``clamp_vit_bench.methods`` entry point group.
"""
from dataclasses import dataclass

import torch

from clamp.quant import calibrate, quantize_model


@dataclass
class UniformNoise:
    n: int = 32
    label_free = True

    def quantize(self, task, model, config, seed):
        lo, hi = task.input_spec.bounds()
        gen = torch.Generator().manual_seed(seed)
        images = lo + (hi - lo) * torch.rand((self.n, *task.input_spec.shape), generator=gen)
        qnet = calibrate(quantize_model(task.backbone(model), config), images.to(task.device).split(32))
        return task.replace_backbone(model, qnet), {"calibration": f"uniform:{self.n}", "n_calib": self.n}
