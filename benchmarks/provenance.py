"""Where a number came from: library versions, project commit, device."""
from __future__ import annotations

import importlib.metadata
import subprocess
from functools import cache
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


@cache
def commit() -> str:
    """The project's git commit, with '+dirty' when the work tree has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    sha = git("rev-parse", "--short=12", "HEAD")
    if not sha:
        return "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def versions() -> str:
    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "-"
    libs = ("torch", "timm", "mmengine", "mmcv", "mmdet", "mmsegmentation")
    return " ".join(f"{lib}={version(lib)}" for lib in libs) + f" commit={commit()}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()}"
