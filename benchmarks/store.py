"""The result store: one JSON file per cell under results/cells/<task>/<key>.json, written atomically."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.cell import Cell
from clamp.cache import atomic_write_text

RESULTS = Path(os.environ.get("CLAMP_RESULTS", Path(__file__).resolve().parent.parent / "results"))


class ResultStore:
    """Stored cells; a file that does not parse or does not match its key counts as absent."""

    def __init__(self, root: Path | str = RESULTS) -> None:
        self.root = Path(root)

    def path(self, cell: Cell) -> Path:
        return self.root / "cells" / cell.task / f"{cell.key}.json"

    def load(self, cell: Cell) -> dict[str, Any] | None:
        return self._read(self.path(cell), cell.key)

    def done(self, cell: Cell) -> bool:
        record = self.load(cell)
        return record is not None and record["status"] == "ok"

    def save(self, cell: Cell, record: dict[str, Any]) -> Path:
        record = {"key": cell.key, "config": cell.config(), **record}
        atomic_write_text(self.path(cell), json.dumps(record, indent=1, sort_keys=True) + "\n")
        return self.path(cell)

    def records(self, task: str) -> Iterator[dict[str, Any]]:
        for path in sorted((self.root / "cells" / task).glob("*.json")):
            record = self._read(path, path.stem)
            if record is not None:
                yield record

    @staticmethod
    def _read(path: Path, key: str) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(record, dict) or record.get("key") != key or "status" not in record:
            return None
        if Cell.from_config(record["config"]).key != key:
            return None
        return record
