import os
import tempfile

import pytest
import timm
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["CLAMP_CACHE"] = tempfile.mkdtemp(prefix="clamp-cache-")  # tests never reuse a user's cache
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_vit():
    """A random 2-block ViT at 32 px: fast, and enough to exercise every quantized module."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
                             num_heads=3, num_classes=10).eval()


@pytest.fixture
def tiny_swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=2, window_size=4, embed_dim=16,
                             depths=(2, 2), num_heads=(2, 4), num_classes=10).eval()


@pytest.fixture
def image_steps(monkeypatch, tmp_path):
    """Counts the optimiser steps taken on image batches (a single 4-D parameter): the independent
    truth for a row's ``image_steps``. An empty image cache, so that every image is generated here."""
    monkeypatch.setenv("CLAMP_CACHE", str(tmp_path / "cache"))
    count = [0]
    step = torch.optim.Adam.step

    def counting(self, *args, **kwargs):
        params = [p for g in self.param_groups for p in g["params"]]
        count[0] += len(params) == 1 and params[0].dim() == 4
        return step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.Adam, "step", counting)
    return count
