"""Behaviour fingerprints: a row is stale exactly when the code that would compute it today computes
something different on its path, not when some file changed.

Every code path a row takes gets a canary (benchmarks/canary.py): a tiny deterministic run whose
signature summarises the synthetic images, every quantizer's scale and zero point, the bits and the
metrics. Two signatures are the same behaviour when the bits are equal and every summary agrees
within ``RTOL`` of its own magnitude; equal behaviours share one short id, the path's fingerprint.

Signatures live in ``<results>/fingerprints/<code>.json``, one file per code tree (the git trees of
clamp/, baselines/ and tasks/, ``provenance.code_fingerprint``): computed once per committed code and
path, committed with the results, so that building the leaderboard reruns nothing. A record carries
the fingerprint of its path at the code that computed it (``behaviour``); records from before this
have their code's file computed from a ``git worktree`` of their commit (``clamp-bench fingerprint
--backfill``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from benchmarks import canary, provenance
from clamp.cache import atomic_write_text

log = logging.getLogger("clamp-bench")
# Within this relative tolerance two canaries computed the same thing. Measured (README, "Behaviour
# fingerprints"): the same code with 1 and 2 threads agrees to 3e-10; the contrastive loss summed in
# another order moved micro DeiT's canary images by 2e-7; Gaussian noise 1% wider moves them by 1e-2.
RTOL = 1e-4
# Metrics may differ by one test image of the canary's 256 (0.39 points): a prediction on a rounding
# boundary flips with the last bit of a scale (measured: scales equal to 3.5e-8, one image apart).
METRIC_ATOL = 0.4
CANARY = Path(canary.__file__)
# signatures are comparable only between runs of the same canary script: a file of another is ignored
CANARY_DIGEST = hashlib.sha256(CANARY.read_bytes()).hexdigest()[:12]


def path_of(config: dict) -> dict:
    """The code path of a stored cell configuration: everything that selects code, nothing that
    only sizes the run (seed, bits, evaluation set, the method's budget options)."""
    budget = canary.budget(config["method"], _method_class(config["method"]))
    return {"task": config["task"], "model": config["model"], "method": config["method"],
            "mixed": bool(config["mixed"]), "layout": config["quant_options"].get("layout", "inputs"),
            "method_options": {k: v for k, v in sorted(config["method_options"].items()) if k not in budget},
            "quant_options": {k: v for k, v in sorted(config["quant_options"].items()) if k != "layout"},
            "task_options": dict(sorted(config.get("task_options", {}).items()))}


def _method_class(name: str) -> type | None:
    if name in canary.BUDGETS:
        return None
    from clamp.registry import get_method
    try:
        return get_method(name)
    except ValueError:
        return None


def path_name(path: dict) -> str:
    """'classification/micro_deit_patch4_32/clamp-vit/reference/MP data=psaq': readable and unique."""
    options = [f"{k}={v}" for k, v in path["method_options"].items()]
    options += [f"quant.{k}={v}" for k, v in path["quant_options"].items()]
    options += [f"task.{k}={json.dumps(v, sort_keys=True)}" for k, v in path["task_options"].items()]
    name = f"{path['task']}/{path['model']}/{path['method']}/{path['layout']}/{'MP' if path['mixed'] else 'fixed'}"
    return " ".join([name, *options])


def _close(a: list[float], b: list[float]) -> bool:
    """Summaries from canary.summarise: equal counts; mean, rms and projections within RTOL of the
    vector's own scale."""
    if len(a) != len(b) or a[:1] != b[:1]:
        return False
    if len(a) == 1:
        return True
    scale = max(abs(b[2]), 1e-30)
    proj_a, proj_b = a[3:], b[3:]
    proj_scale = max(math.dist(proj_b, [0.0] * len(proj_b)), 1e-30)
    return (abs(a[1] - b[1]) <= RTOL * scale and abs(a[2] - b[2]) <= RTOL * scale
            and math.dist(proj_a, proj_b) <= RTOL * proj_scale)


def same_behaviour(a: dict, b: dict) -> bool:
    """Two canary signatures of one path computed the same thing (see RTOL)."""
    if a.keys() != b.keys() or a["bits"] != b["bits"] or len(a["metrics"]) != len(b["metrics"]):
        return False
    if any(abs(x - y) > METRIC_ATOL for x, y in zip(a["metrics"], b["metrics"], strict=True)):
        return False
    return all(_close(a[k], b[k]) for k in a if k not in ("bits", "metrics"))


_UNCOMMITTED: dict[str, dict] = {}  # code root -> entries of its uncommitted code: this process only, never stored


class Fingerprints:
    """The fingerprint files of a results folder: which behaviour every (code, path) has."""

    def __init__(self, results: Path | str) -> None:
        self.dir = Path(results) / "fingerprints"
        self._files: dict[str, dict] = {}

    def entries(self, code: str) -> dict[str, dict]:
        """path name -> entry ({id, path, signature, seconds} or {path, error}) at code tree ``code``."""
        if code not in self._files:
            path = self.dir / f"{code}.json"
            data = json.loads(path.read_text()) if path.is_file() else {}
            self._files[code] = data["paths"] if data.get("canary") == CANARY_DIGEST else {}
        return self._files[code]

    def known(self, name: str) -> list[dict]:
        """Every stored behaviour of path ``name``, in a fixed order (the first match names a behaviour)."""
        found = []
        for file in sorted(self.dir.glob("*.json")):
            entry = self.entries(file.stem).get(name)
            if entry and "id" in entry:
                found.append(entry)
        return found

    def identify(self, name: str, signature: dict) -> str:
        """The id of the stored behaviour this signature matches, else a new one (its own digest)."""
        for entry in self.known(name):
            if same_behaviour(signature, entry["signature"]):
                return entry["id"]
        blob = json.dumps([name, signature], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def ensure(self, code: str | None, code_root: Path, paths: Iterable[dict], commit: str = "") -> dict[str, dict]:
        """Entries of ``paths`` at ``code`` (None: the uncommitted checkout at ``code_root``): stored
        ones read, missing ones computed by canaries in one process and stored (never for None)."""
        have = _UNCOMMITTED.setdefault(str(code_root), {}) if code is None else self.entries(code)
        todo = {path_name(p): p for p in paths if path_name(p) not in have}
        if todo:
            log.info("fingerprints: %d canaries at %s (%s)", len(todo), code or "uncommitted code", code_root)
            for result in run_canaries(code_root, list(todo.values())):
                name = path_name(result["path"])
                if "signature" in result:
                    result["id"] = self.identify(name, result["signature"])
                have[name] = result
            if code is not None:
                data = {"code": code, "commit": commit, "canary": CANARY_DIGEST, "paths": dict(sorted(have.items()))}
                atomic_write_text(self.dir / f"{code}.json", json.dumps(data, indent=1, sort_keys=True) + "\n")
        return have

    def today_entries(self, paths: Iterable[dict]) -> dict[str, dict]:
        """path name -> today's entry: its fingerprint and signature, or the error today's code
        fails with on the path."""
        return self.ensure(provenance.committed_code_tree(), provenance.ROOT, paths, provenance.commit())

    def today(self, paths: Iterable[dict]) -> dict[str, str | None]:
        """path name -> today's fingerprint (None where today's code fails on the path)."""
        return {name: entry.get("id") for name, entry in self.today_entries(paths).items()}

    def of_record(self, record: dict) -> str | None:
        """The fingerprint of a record's path at the code that computed it: stored with the record,
        else from its code's file (--backfill); None when unknown."""
        if record.get("behaviour"):
            return record["behaviour"]
        code = provenance.record_fingerprint(record)
        entry = self.entries(code).get(path_name(path_of(record["config"]))) if code else None
        return entry.get("id") if entry else None

    def signature(self, name: str, behaviour: str) -> dict | None:
        """The stored signature of fingerprint ``behaviour`` of path ``name``."""
        return next((e["signature"] for e in self.known(name) if e["id"] == behaviour), None)

    def stale(self, records: list[dict]) -> dict[str, bool]:
        """record key -> whether its row is stale: computed by uncommitted code, or on a path whose
        behaviour then is unknown or not the same as today's (compared by signature, so that the
        tolerance in force decides, not the one that named the fingerprints)."""
        names = {r["key"]: path_name(path_of(r["config"])) for r in records}
        today = self.today_entries(path_of(r["config"]) for r in records)
        def stale(r: dict) -> bool:
            then, now = self.of_record(r), today.get(names[r["key"]], {})
            if provenance.is_dirty(r) or then is None or "id" not in now:
                return True
            if then == now["id"]:
                return False
            then_signature = self.signature(names[r["key"]], then)
            return then_signature is None or not same_behaviour(now["signature"], then_signature)
        return {r["key"]: stale(r) for r in records}


def run_canaries(code_root: Path, paths: list[dict]) -> list[dict]:
    """Run the canaries of ``paths`` on the code at ``code_root``: fresh processes of one thread
    each (one reduction order everywhere), one per core, the paths dealt out between them."""
    workers = max(1, min(len(paths), os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="clamp-fingerprint-") as tmp:
        procs = []
        for i in range(workers):
            todo, out = Path(tmp) / f"paths{i}.json", Path(tmp) / f"out{i}.json"
            todo.write_text(json.dumps(paths[i::workers]))
            procs.append((out, subprocess.Popen(  # its progress lines and errors go to our stderr
                [sys.executable, str(CANARY), "--code-root", str(code_root), str(todo), str(out)],
                stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})))  # mm's deprecations
        results = []
        for out, proc in procs:
            if proc.wait() != 0 or not out.is_file():
                raise RuntimeError(f"canaries at {code_root} failed (exit {proc.returncode}): see the lines above")
            results += json.loads(out.read_text())
        return results


def _commit_of(record: dict) -> str | None:
    match = re.search(r"commit=([0-9a-f]+)$", record.get("versions", ""))
    return match[1] if match else None


def backfill(records: Iterable[dict], fps: Fingerprints) -> dict[str, int]:
    """Compute the fingerprints of old records' paths at their own commits, each in a throwaway
    ``git worktree`` (nothing is committed from it); return how many paths each code tree ran."""
    wanted: dict[str, tuple[str, dict[str, dict]]] = {}
    for record in records:
        code, commit = provenance.record_fingerprint(record), _commit_of(record)
        if record.get("behaviour") or not code or not commit:
            continue
        path = path_of(record["config"])
        if path_name(path) not in fps.entries(code):
            wanted.setdefault(code, (commit, {}))[1][path_name(path)] = path
    ran = {}
    for code, (commit, paths) in sorted(wanted.items()):
        with tempfile.TemporaryDirectory(prefix="clamp-worktree-") as tmp:
            tree = Path(tmp) / "code"
            provenance.git("worktree", "add", "--detach", str(tree), commit, check=True)
            try:
                fps.ensure(code, tree, paths.values(), commit)
            finally:
                provenance.git("worktree", "remove", "--force", str(tree))
        ran[code] = len(paths)
    return ran
