"""A minimal third-party package: a method and a task (README "Adding a method", "Adding a task").

It lives in its own "package" (this folder, with a .dist-info declaring the entry points), so the
harness can only find them through the ``clamp_vit_bench.methods`` and ``clamp_vit_bench.tasks``
entry point groups.
"""
from dataclasses import dataclass

import torch

from clamp.quant import calibrate, quantize_model
from clamp.registry import Method
from tasks.classification import ClassificationTask


# min-max calibration on uniform noise over the valid pixel range
@dataclass
class UniformNoise(Method):
    n: int = 32  # options are the constructor's fields: --option n=64

    def quantize_backbone(self, task, net, config, seed):
        lo, hi = task.input_spec.bounds()
        gen = torch.Generator().manual_seed(seed)
        images = lo + (hi - lo) * torch.rand((self.n, *task.input_spec.shape), generator=gen)
        qnet = calibrate(quantize_model(net, config), images.to(task.device).split(32))
        return qnet, {"calibration": f"uniform:{self.n}", "n_calib": self.n}


# classification scored without labels: the share of evaluation images on which the quantized
# model predicts the class the FP model predicts (fidelity rather than accuracy)
class Agreement(ClassificationTask):
    name = "agreement"
    metric = "agreement"

    @torch.no_grad()
    def evaluate(self, model):
        fp, model = self.build_model().eval(), model.eval()
        same = n = 0
        for x, _ in self._batches("test", self.n_eval, seed=0):
            x = x.to(self.device)
            same += int((model(x).argmax(-1) == fp(x).argmax(-1)).sum())
            n += len(x)
        return {"agreement": 100 * same / n, "n_eval": n}
