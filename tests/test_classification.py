"""The classification adapter and the two calibration baselines on the micro models."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from baselines.calibration import GaussianNoise, RealData
from clamp.quant import BitPlan, QuantConfig
from tasks import make_task
from tasks.classification import ClassificationTask
from tasks.micro import fashion_mnist

SWIN, DEIT = "micro_swin_patch2_window4_32", "micro_deit_patch4_32"


@pytest.fixture(scope="module")
def swin_task():
    return ClassificationTask(SWIN, n_eval=2000)


def test_fp_top1_equals_a_plain_loop():
    task = ClassificationTask(SWIN)
    model = task.build_model()
    images, labels = fashion_mnist.load_split("test")
    cfg = model.pretrained_cfg
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), 1000):
            x = F.interpolate(images[i:i + 1000].float().div(255)[:, None], size=32, mode="bilinear")
            x = (x.repeat(1, 3, 1, 1) - cfg["mean"][0]) / cfg["std"][0]
            correct += (model(x).argmax(1) == labels[i:i + 1000]).sum().item()
    metrics = task.evaluate(model)
    assert metrics["n_eval"] == 10000
    assert metrics["top1"] == pytest.approx(100 * correct / 10000, abs=1e-9)
    assert metrics["top1"] > 80  # a trained model, far above the 10% of chance


def test_w16a16_within_0p1_and_w8a8_within_1_point(swin_task):
    model = swin_task.build_model()
    fp = swin_task.evaluate(model)["top1"]
    q16, _ = RealData().quantize(swin_task, model, QuantConfig(BitPlan(16, 16)), seed=0)
    q8, report = RealData().quantize(swin_task, model, QuantConfig(BitPlan(8, 8)), seed=0)
    assert abs(swin_task.evaluate(q16)["top1"] - fp) <= 0.1
    assert abs(swin_task.evaluate(q8)["top1"] - fp) <= 1.0
    assert report == {"calibration": "real:32", "n_calib": 32, "image_steps": 0}


def test_more_bits_never_much_worse(swin_task):
    model = swin_task.build_model()
    acc = {bits: swin_task.evaluate(GaussianNoise().quantize(swin_task, model, QuantConfig(BitPlan(bits, 8)), 0)[0])
           ["top1"] for bits in (4, 8)}
    assert acc[8] >= acc[4] - 1.0


def test_real_images_are_deterministic_under_a_seed(swin_task):
    a, b, c = (swin_task.real_images(8, s) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    lo, hi = swin_task.input_spec.bounds()
    assert a.min() >= lo.min() - 1e-5 and a.max() <= hi.max() + 1e-5


def test_unknown_model_is_one_clear_line():
    with pytest.raises(ValueError, match="unknown model 'deit_huge_nope'"):
        make_task("classification", "deit_huge_nope")


def test_missing_imagenet_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --data-root or set CLAMP_IMAGENET"):
        make_task("classification", "deit_tiny_patch16_224.fb_in1k", data_root=str(tmp_path))


def test_missing_fashion_mnist_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.resolve_root(tmp_path)


def test_missing_pretrained_weights_name_the_fix(tmp_path):
    (tmp_path / "val").mkdir()
    task = make_task("classification", "deit_tiny_patch16_224.fb_in1k", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"clamp-bench fetch.*--checkpoint PATH"):
        task.build_model()


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", SWIN, "--method", "nope"], "unknown method 'nope'"),
    (["--model", SWIN, "--w-bits", "1"], "bit-width 1 is not supported"),
])
def test_cli_errors_are_one_line(args, message, tmp_path):
    base = {"--model": SWIN, "--method": "gaussian", "--w-bits": "4", "--a-bits": "8"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = [sys.executable, "-m", "benchmarks", "run", *[v for kv in base.items() for v in kv]]
    env = {"CLAMP_RESULTS": str(tmp_path), "CLAMP_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_corrupt_checkpoint_is_one_clear_line(tmp_path):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot load weights for micro_swin_patch2_window4_32"):
        ClassificationTask(SWIN, checkpoint=str(bad)).build_model()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClassificationTask(SWIN, checkpoint=str(tmp_path / "missing.pt")).build_model()
