"""The result store: one JSON file per cell under <root>/cells/<task>/<key>.json, written atomically.

Only a successful computation writes ``<key>.json``; a failed attempt goes to
``<key>.failed.json`` beside it, so a good record is never replaced by an error. A per-cell
lock (filelock) keeps two processes on one folder from computing the same cell at once.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file

from benchmarks.cell import SCHEMA_VERSION, Cell, upgrade
from clamp.io import atomic_write, atomic_write_text

log = logging.getLogger("clamp-bench")
REPO_RESULTS = Path(__file__).resolve().parent.parent / "results"
FAILED = ".failed.json"


def default_root() -> Path:
    """``$CLAMP_RESULTS`` when set, else the committed leaderboard folder results/."""
    return Path(os.environ.get("CLAMP_RESULTS") or REPO_RESULTS)


class ResultStore:
    """Stored cells; a file that does not parse or does not match its key counts as absent."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.bad: list[str] = []  # files that ``records`` could not use, with why

    def path(self, cell: Cell) -> Path:
        return self.root / "cells" / cell.task / f"{cell.key}.json"

    def failed_path(self, cell: Cell) -> Path:
        return self.path(cell).with_name(cell.key + FAILED)

    def state_path(self, task: str, key: str) -> Path:
        """The quantizer state (bits, scales, zero points) of a good record."""
        return self.root / "cells" / task / f"{key}.quant.safetensors"

    def deploy_path(self, task: str, key: str) -> Path:
        """The deployment check of a good record (benchmarks/deploy.py): beside the cells, not among them."""
        return self.root / "deploy" / task / f"{key}.json"

    def bits(self, task: str, key: str) -> dict[str, int] | None:
        """Bits of every quantizer of a good record, by name, from its stored state (None: no state)."""
        path = self.state_path(task, key)
        if not path.is_file():
            return None
        with safe_open(str(path), "pt") as f:
            return {k.removesuffix(".bits"): int(f.get_tensor(k)) for k in f.keys() if k.endswith(".bits")}

    def lock(self, name: str) -> FileLock:
        """A lock under <root>/locks (untracked): one per cell key while it is computed, one for
        the leaderboard rebuild."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(path)

    def load(self, cell: Cell) -> dict[str, Any] | None:
        """The good record of ``cell``, else its last failed attempt, else None."""
        return self.read(self.path(cell), cell.key) or self.read(self.failed_path(cell), cell.key)

    def done(self, cell: Cell) -> bool:
        record = self.read(self.path(cell), cell.key)
        return record is not None and record["status"] == "ok"

    def save(self, cell: Cell, record: dict[str, Any]) -> Path:
        """A good record replaces the cell's file (and clears a failed attempt); a failed one
        is written beside it."""
        record = {"key": cell.key, "schema_version": SCHEMA_VERSION, "config": cell.config(), **record}
        state = record.pop("quant_state", None)
        if state and record["status"] == "ok":  # bits, scales, zero points: <key>.quant.safetensors
            state_path = self.state_path(cell.task, cell.key)
            atomic_write(state_path, lambda tmp: save_file(state, tmp))
            record["quant_state"] = state_path.name
        path = self.path(cell) if record["status"] == "ok" else self.failed_path(cell)
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
        if record["status"] == "ok":
            self.failed_path(cell).unlink(missing_ok=True)
        return path

    def records(self, task: str) -> Iterator[dict[str, Any]]:
        """Good records of ``task``; unreadable ones are named in ``bad``, not skipped silently."""
        for path in sorted((self.root / "cells" / task).glob("*.json")):
            if path.name.endswith(FAILED):
                continue
            try:
                record = self._parse(path, path.stem)
            except ValueError as err:
                self.bad.append(f"{path}: {err}")
                log.warning("skipping %s: %s", path, err)
                continue
            yield record

    def read(self, path: Path, key: str) -> dict[str, Any] | None:
        """The record in ``path`` if it is a valid record of ``key``, else None."""
        try:
            return self._parse(path, key)
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def _parse(path: Path, key: str) -> dict[str, Any]:
        """The record in ``path``; ValueError saying what is wrong with it."""
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"not a JSON record (truncated?): {err}") from err
        if not isinstance(record, dict) or record.get("key") != key or "status" not in record:
            raise ValueError("not a record of this key")
        try:
            record = upgrade(record)
            if Cell.from_config(record["config"]).key != key:
                raise ValueError("its config does not hash to its key")
        except (TypeError, KeyError) as err:
            raise ValueError(f"invalid config: {err}") from err
        return record

