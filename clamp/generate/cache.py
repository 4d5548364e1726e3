"""Synthetic images cached by the full configuration that made them, with a PNG grid beside
them for a person to look at."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from clamp.io import atomic_write, atomic_write_text, cache_dir, config_key
from clamp.task import InputSpec

log = logging.getLogger("clamp-bench")


def save_png_grid(x: torch.Tensor, spec: InputSpec, path: Path) -> None:
    """Synthetic images back in pixel space, 8 per row, for a person to look at."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    atomic_write(path, lambda tmp: save_image((x * std + mean).clamp(0, 1).cpu(), tmp, nrow=8, format="png"))


def cached_images(config: dict[str, Any], make: Callable[[], torch.Tensor],
                  spec: InputSpec) -> tuple[torch.Tensor, Path]:
    """Synthetic images for ``config``: loaded when cached (and intact), else made and stored
    atomically with a PNG grid beside them. Returns the images and their path."""
    path = cache_dir("synthetic") / f"{config_key(config)}.pt"
    if path.is_file():
        try:
            x = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(x.shape[1:]) == tuple(spec.shape):
                return x, path
        except Exception as err:  # a torn or foreign file is regenerated, never trusted
            log.warning("synthetic cache %s unreadable (%s): regenerating", path, err)
    x = make()
    atomic_write(path, lambda tmp: torch.save(x.detach().cpu(), tmp))
    atomic_write_text(path.with_suffix(".json"), json.dumps(config, indent=1, sort_keys=True, default=str))
    save_png_grid(x, spec, path.with_suffix(".png"))
    return x.detach().cpu(), path
