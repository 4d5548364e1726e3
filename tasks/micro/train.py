"""Train a micro model on Fashion-MNIST and commit-ready save it (safetensors + a JSON record).

    python -m tasks.micro.train micro_deit_patch4_32 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import math
import time

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import tasks.micro.models as zoo
from tasks.micro.fashion_mnist import load_split, to_model_input


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 px (the usual Fashion-MNIST recipe)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


@torch.no_grad()
def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        pred = model(to_model_input(images[i:i + batch], zoo.INPUT_SIZE)).argmax(1)
        correct += (pred == labels[i:i + batch]).sum().item()
    return 100.0 * correct / len(images)


def train(name: str, epochs: int, batch: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = timm.create_model(name)
    images, labels = load_split("train")
    steps = epochs * math.ceil(len(images) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch):
            idx = order[i:i + batch]
            x = augment(to_model_input(images[idx], zoo.INPUT_SIZE), gen)
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"{name} epoch {epoch + 1}/{epochs} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    test_images, test_labels = load_split("test")
    record = {"model": name, "epochs": epochs, "batch": batch, "lr": lr, "seed": seed,
              "train_s": round(time.time() - start, 1), "fp_top1": top1(model, test_images, test_labels),
              "n_eval": len(test_images), "torch": torch.__version__, "timm": timm.__version__}
    zoo.CHECKPOINTS.mkdir(exist_ok=True)
    path = zoo.checkpoint_path(name)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path) + ".tmp")
    path.with_suffix(".safetensors.tmp").replace(path)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(zoo.MICRO_MODELS), choices=zoo.MICRO_MODELS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.models:
        print(json.dumps(train(name, args.epochs, args.batch, args.lr, args.seed)))


if __name__ == "__main__":
    main()
