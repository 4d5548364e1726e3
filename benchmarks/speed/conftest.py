import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLAMP_CACHE", tempfile.mkdtemp(prefix="clamp-speed-"))


@pytest.fixture(scope="session")
def deit_task():
    from tasks.classification import ClassificationTask
    torch.manual_seed(0)
    return ClassificationTask("micro_deit_patch4_32", n_eval=1000)
