"""Caches keyed by a hash of the full configuration: $CLAMP_CACHE, or ~/.cache/clamp-vit-bench."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from clamp.task import InputSpec

log = logging.getLogger("clamp-bench")


def cache_dir(kind: str) -> Path:
    root = Path(os.environ.get("CLAMP_CACHE") or Path.home() / ".cache" / "clamp-vit-bench")
    return root / kind


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (weights fingerprints)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def config_key(config: Any) -> str:
    """Stable 16-hex key of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temporary file in the same folder, then rename it over ``path``: readers
    see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # the mode a plain open() gives, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write)


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
