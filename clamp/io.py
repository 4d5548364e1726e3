"""The ground floor: atomic writes, file digests, configuration keys and cache folders
($CLAMP_CACHE, or ~/.cache/clamp-vit-bench). Standard library only, so every layer (core,
baselines, tasks, harness) may import it."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
