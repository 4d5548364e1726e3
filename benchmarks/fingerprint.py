"""Behaviour fingerprints: a row is stale exactly when the code that would compute it today computes
something different on its path, not when some file changed.

Every code path a row takes gets a canary (benchmarks/canary.py): a tiny deterministic run whose
signature summarises the synthetic images, every quantizer's scale and zero point, the bits and the
metrics. Two signatures are the same behaviour when the bits are equal and every summary agrees
within ``RTOL`` of its own magnitude; equal behaviours share one short id, the path's fingerprint.

Signatures live in ``<results>/fingerprints/<machine>/<code>.json``, one file per machine and code
tree (the git trees of clamp/, baselines/ and tasks/, ``provenance.code_fingerprint``): computed once
per committed code, path and machine, committed with the results, so that building the leaderboard
reruns nothing; codes are compared on one machine only (``Fingerprints``). A record carries
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
from clamp.io import atomic_write_text

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
            "mixed": bool(config["mixed"]), "layout": config["quant_options"]["layout"],
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


UNRECORDED = ""  # the machine of files written before machines were recorded: <results>/fingerprints/<code>.json


class Fingerprints:
    """The fingerprint files of a results folder: which behaviour every (machine, code, path) has.

    Files are per machine (``provenance.machine``), ``<results>/fingerprints/<machine>/<code>.json``:
    measured, the same code on two x86 CPUs gives canary images 1e-3 apart after two Adam steps
    (a near-zero gradient whose sign flips moves a pixel by the full step), far beyond any
    tolerance that still shows a real change; so two codes are compared by their canaries on one
    machine, never across machines."""

    def __init__(self, results: Path | str) -> None:
        self.dir = Path(results) / "fingerprints"
        self.machine = provenance.machine()
        self._files: dict[tuple[str, str], dict] = {}

    def _file(self, code: str, machine: str) -> Path:
        return self.dir / machine / f"{code}.json" if machine else self.dir / f"{code}.json"

    def machines(self) -> list[str]:
        """Machines with files here: this one first, then the others, the unrecorded one last."""
        others = sorted(p.name for p in self.dir.iterdir() if p.is_dir()) if self.dir.is_dir() else []
        return [self.machine, *(m for m in others if m != self.machine), UNRECORDED]

    def entries(self, code: str, machine: str | None = None) -> dict[str, dict]:
        """path name -> entry ({id, path, signature, seconds} or {path, error}) at code tree ``code``
        on ``machine`` (default: this one)."""
        machine = self.machine if machine is None else machine
        if (code, machine) not in self._files:
            path = self._file(code, machine)
            data = json.loads(path.read_text()) if path.is_file() else {}
            self._files[code, machine] = data["paths"] if data.get("canary") == CANARY_DIGEST else {}
        return self._files[code, machine]

    def known(self, name: str) -> list[dict]:
        """Every stored behaviour of path ``name``, in a fixed order (the first match names a behaviour)."""
        found = []
        for file in sorted(self.dir.rglob("*.json")):
            machine = "" if file.parent == self.dir else file.parent.name
            entry = self.entries(file.stem, machine).get(name)
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
        """Entries of ``paths`` at ``code`` (None: the uncommitted checkout at ``code_root``) on this
        machine: stored ones read, missing ones computed by canaries and stored (never for None)."""
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
                data = {"code": code, "commit": commit, "canary": CANARY_DIGEST,
                        "machine": provenance.machine_description(), "paths": dict(sorted(have.items()))}
                atomic_write_text(self._file(code, self.machine), json.dumps(data, indent=1, sort_keys=True) + "\n")
        return have

    def today_entries(self, paths: Iterable[dict]) -> dict[str, dict]:
        """path name -> today's entry on this machine: its fingerprint and signature, or the error
        today's code fails with on the path."""
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
        name = path_name(path_of(record["config"]))
        entry = next((e for m in self.machines() if code and (e := self.entries(code, m).get(name))), None)
        return entry.get("id") if entry else None

    def signature(self, name: str, behaviour: str) -> dict | None:
        """The stored signature of fingerprint ``behaviour`` of path ``name``."""
        return next((e["signature"] for e in self.known(name) if e["id"] == behaviour), None)

    def _today_somewhere(self, names: set[str]) -> dict[str, dict[str, dict]]:
        """machine -> today's entries, on every machine whose file of today's code has them all."""
        code = provenance.committed_code_tree()
        if code is None:
            return {}
        return {m: e for m in self.machines() if names <= (e := self.entries(code, m)).keys()}

    def stale(self, records: list[dict]) -> dict[str, bool]:
        """record key -> whether its row is stale: computed by uncommitted code, or on a path whose
        behaviour at the record's code differs from today's, both canaries run on one machine (the
        first that has both; this one computes today's when no machine has them). A record whose
        code has no canary on such a machine falls back to the fingerprint it stored, compared by
        signature (so that the tolerance in force decides): conservative across machines, and
        ``clamp-bench fingerprint --backfill`` computes its code's canaries here."""
        names = {r["key"]: path_name(path_of(r["config"])) for r in records}
        today = self._today_somewhere(set(names.values()))
        if self.machine not in today:
            today[self.machine] = self.today_entries(path_of(r["config"]) for r in records)
        def same(a: dict, b: dict) -> bool | None:
            return None if "id" not in a or "id" not in b else a["id"] == b["id"] or \
                same_behaviour(a["signature"], b["signature"])
        def stale(r: dict) -> bool:
            name, code = names[r["key"]], provenance.record_fingerprint(r)
            if provenance.is_dirty(r):
                return True
            for machine, now in today.items():
                then = self.entries(code, machine).get(name) if code else None
                if then and name in now:
                    return not same(then, now[name])
            then, now = self.of_record(r), today[self.machine].get(name, {})
            if then is None or "id" not in now:
                return True
            then_signature = self.signature(name, then)
            return not (then == now["id"] or (then_signature is not None
                        and same_behaviour(now["signature"], then_signature)))
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
    """Compute, on this machine, the fingerprints of records' paths at their own commits that it
    has not run yet, each in a throwaway ``git worktree`` (nothing is committed from it); return
    how many paths each code tree ran."""
    wanted: dict[str, tuple[str, dict[str, dict]]] = {}
    for record in records:
        code, commit = provenance.record_fingerprint(record), _commit_of(record)
        if not code or not commit:
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
