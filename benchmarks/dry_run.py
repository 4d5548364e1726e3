"""What a suite would do: the cells it would run, skip and find stale, with a time estimate from
the stored wall time of similar cells."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from benchmarks import leaderboard
from benchmarks.cell import Cell
from benchmarks.fingerprint import Fingerprints
from benchmarks.store import ResultStore


@dataclass
class Plan:
    finished: list[Cell] = field(default_factory=list)
    stale: list[Cell] = field(default_factory=list)  # finished, but by other code than this checkout's
    to_run: list[Cell] = field(default_factory=list)
    seconds: dict[str, float | None] = field(default_factory=dict)  # estimate per cell key
    rough: set[str] = field(default_factory=set)  # keys estimated from cells of other options or precision

    def estimate(self, cells: list[Cell]) -> str:
        known = [self.seconds[c.key] for c in cells if self.seconds[c.key] is not None]
        unknown = len(cells) - len(known)
        rough = sum(c.key in self.rough for c in cells)
        text = f"about {sum(known) / 60:.0f} min" if known else "no estimate"
        notes = [f"+{unknown} cells never timed here"] if unknown and known else []
        notes += [f"{rough} timed only at other options or bits: their budget may differ"] if rough else []
        return text + (f" ({'; '.join(notes)})" if notes else "")

    def describe(self, stale: bool = False) -> str:
        """What the suite would do; ``stale``: what it would do with --stale (the stale cells run too)."""
        runs = self.to_run + (self.stale if stale else [])
        lines = [f"{len(runs)} to run ({self.estimate(runs)}), {len(self.finished)} finished "
                 f"({len(self.stale)} of them stale{', recomputed' if stale else ''})"]
        for label, cells in (("run", self.to_run), ("stale", self.stale)):
            for c in cells:
                est = self.seconds[c.key]
                lines.append(f"  {label:5} {c.key} {c.model} {c.method} {c.precision} seed={c.seed} "
                             f"{c.method_options or ''} {c.quant_options['layout']} "
                             + (f"~{est:.0f} s" if est is not None else "?")
                             + (" (timed at other options)" if c.key in self.rough else ""))
        return "\n".join(lines)

    def all_finished(self, name: str, store: ResultStore) -> str:
        return (f"all {len(self.finished)} cells of {name} are finished: their records are in {store.root} "
                f"(in a fresh clone, the committed leaderboard). Recompute them with --force "
                f"({self.estimate(self.finished)}) or only the {len(self.stale)} stale ones with --stale "
                f"({self.estimate(self.stale)}).\n{leaderboard.cells_table(store, self.finished)}")


def plan(cells: list[Cell], store: ResultStore) -> Plan:
    """Sort ``cells`` into finished (and stale) and to run, and estimate each from stored wall
    times: the median of the same model, method, precision and options, else of the same model
    and method."""
    out = Plan()
    records = {c.key: store.load(c) for c in cells}
    finished = [r for r in records.values() if r and r["status"] == "ok"]
    stale = Fingerprints(store.root).stale(finished)
    timed = [r for task in sorted({c.task for c in cells}) for r in store.records(task) if r["status"] == "ok"]
    for c in cells:
        record = records[c.key]
        if record and record["status"] == "ok":
            out.finished.append(c)
            if stale[record["key"]]:
                out.stale.append(c)
        else:
            out.to_run.append(c)
        out.seconds[c.key], exact = _estimate(c, timed)
        if out.seconds[c.key] is not None and not exact:
            out.rough.add(c.key)
    return out


def _estimate(cell: Cell, timed: list[dict]) -> tuple[float | None, bool]:
    """The median stored wall time of cells like ``cell`` and whether they share its options and bits."""
    def same(r: dict, *keys: str) -> bool:
        return all(r["config"][k] == getattr(cell, k) for k in keys)
    for keys in (("model", "method", "w_bits", "a_bits", "mixed", "method_options"), ("model", "method")):
        walls = [r["wall_s"] for r in timed if same(r, *keys)]
        if walls:
            return statistics.median(walls), len(keys) > 2
    return None, False
