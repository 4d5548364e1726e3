"""Model families are plugins: each one's attention adapter and reference-layout sites live in
one module (tasks/families/ for ours) named in the entry point group ``clamp_vit_bench.families``
as ``<package>.<family>``, the package being the one whose classes it adapts. A family is loaded
once its package is imported (no model of it can exist before), so a timm run never imports mm.
"""
from __future__ import annotations

import sys
from functools import cache
from importlib.metadata import EntryPoint, entry_points

FAMILY_GROUP = "clamp_vit_bench.families"
_loaded: set[str] = set()


@cache
def _registered() -> tuple[EntryPoint, ...]:
    return tuple(entry_points(group=FAMILY_GROUP))  # read the installed metadata once per process


def load_families() -> None:
    """Import every registered family whose package is imported, once."""
    for ep in _registered():
        if ep.name not in _loaded and ep.name.split(".")[0] in sys.modules:
            _loaded.add(ep.name)
            ep.load()
