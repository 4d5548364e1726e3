"""Behaviour fingerprints: a changed computation makes exactly its rows stale, a rename none."""
import json
import shutil
from pathlib import Path

import pytest

from benchmarks import fingerprint, leaderboard, provenance
from benchmarks.cell import Cell, upgrade
from benchmarks.fingerprint import Fingerprints, path_name, path_of, same_behaviour
from benchmarks.store import ResultStore

ROOT = Path(__file__).resolve().parent.parent
DEIT = "micro_deit_patch4_32"


def _path(method: str, **options) -> dict:
    return path_of(Cell("classification", DEIT, method, 4, 8, n_eval=10000, method_options=options).config())


def test_a_path_keeps_what_selects_code_and_drops_what_sizes_the_run():
    path = _path("clamp-vit", passes=2, cycles=4, negatives="image", data="psaq")
    assert path["method_options"] == {"data": "psaq", "negatives": "image"}  # passes, cycles: the budget
    assert path == _path("clamp-vit", negatives="image", data="psaq")
    assert path_name(path) == f"classification/{DEIT}/clamp-vit/reference/fixed data=psaq negatives=image"
    legacy = {**Cell("classification", DEIT, "real", 8, 8).config(), "quant_options": {}}
    assert path_of(upgrade({"config": legacy})["config"])["layout"] == "inputs"  # schema 1: absent is inputs
    mixed = Cell("classification", DEIT, "clamp-vit", 4, 8, mixed=True).config()
    assert path_of(mixed)["mixed"] and path_of(mixed) != _path("clamp-vit")


def _signature(**changes) -> dict:
    sig = {"bits": [4, 8, 8], "metrics": [80.0, 99.0],
           "scale": [3.0, 0.01, 0.012, *[0.003 * i for i in range(1, 17)]],
           "images": [100.0, 0.1, 0.9, *[-0.2 * i for i in range(1, 17)]]}
    return {**sig, **changes}


def test_same_behaviour_within_the_tolerance_and_not_beyond():
    base = _signature()
    assert same_behaviour(base, _signature())
    nudged = [v * (1 + 1e-7) for v in base["scale"]]
    nudged[0] = base["scale"][0]
    assert same_behaviour(_signature(scale=nudged), base)  # last-bit noise of another reduction order
    moved = list(base["scale"])
    moved[5] *= 1.01  # one projection moves by 1%: a real change
    assert not same_behaviour(_signature(scale=moved), base)
    assert not same_behaviour(_signature(bits=[4, 8, 7]), base)
    assert same_behaviour(_signature(metrics=[80.39, 99.0]), base)  # one test image of 256 flipped
    assert not same_behaviour(_signature(metrics=[80.79, 99.0]), base)  # two
    assert not same_behaviour({k: v for k, v in base.items() if k != "images"}, base)


def _code_copy(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    for package in provenance.CODE:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _replace(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.slow
def test_changed_arithmetic_stales_exactly_its_rows_and_a_rename_none(tmp_path):
    """Records of two methods fingerprinted at this code; 'today' is a throwaway copy whose Gaussian
    noise is 1% wider (only gaussian's rows go stale), then a copy with a function renamed in every
    file that names it (none goes stale)."""
    paths = [_path("gaussian"), _path("real")]
    fps = Fingerprints(tmp_path / "results")
    then = fps.ensure("then", ROOT, paths)
    records = [{"key": p["method"], "config": {**Cell("classification", DEIT, p["method"], 4, 8).config()},
                "behaviour": then[path_name(p)]["id"], "versions": "commit=0123456789ab"} for p in paths]

    changed = _code_copy(tmp_path, "changed")
    _replace(changed, "baselines/calibration.py", "return torch.randn((self.n, *task.input_spec.shape),",
             "return 1.01 * torch.randn((self.n, *task.input_spec.shape),")
    renamed = _code_copy(tmp_path, "renamed")
    for rel in ("baselines/calibration.py", "baselines/psaq.py"):
        _replace(renamed, rel, "ptq(", "calibrated_model(")

    for root, expect in ((changed, {"gaussian": True, "real": False}), (renamed, {"gaussian": False, "real": False})):
        today = Fingerprints(tmp_path / "results").ensure(None, root, paths)  # uncommitted: computed, never stored
        stale = {r["key"]: r["behaviour"] != today[path_name(path_of(r["config"]))].get("id") for r in records}
        assert stale == expect, root.name
    stored = sorted(p.relative_to(fps.dir).as_posix() for p in fps.dir.rglob("*.json"))
    assert stored == [f"{provenance.machine()}/then.json"]  # one file per machine and code


def test_the_leaderboard_marks_stale_exactly_the_rows_whose_fingerprint_differs(tmp_path, monkeypatch):
    """The stale column comes from the fingerprints: the same behaviour id is current whatever
    the commit; another id, a dirty record or an unknown fingerprint is stale."""
    store = ResultStore(tmp_path / "results")
    cells = [Cell("classification", DEIT, "gaussian", 4, 8, n_eval=200, seed=s) for s in range(4)]
    behaviours = ["b-today", "b-old", None, "b-today"]
    versions = ["commit=aaaaaaaaaaaa", "commit=bbbbbbbbbbbb", "commit=cccccccccccc", "commit=dddddddddddd+dirty"]
    for cell, behaviour, version in zip(cells, behaviours, versions, strict=True):
        store.save(cell, {"status": "ok", "metric": "top1", "fp": {"top1": 90.0},
                          "quant": {"top1": 80.0, "n_eval": 200},
                          "compression": {"mean_w_bits": 4, "mean_a_bits": 8, "compression_ratio": 8.0, "size_mb": 1,
                                          "n_params": 10},
                          "report": {"calibration": "gaussian:32", "n_calib": 32}, "wall_s": 1.0, "device": "cpu",
                          "versions": version, "timestamp": "t", "behaviour": behaviour})
    monkeypatch.setattr(Fingerprints, "today_entries",
                        lambda self, paths: {path_name(p): {"id": "b-today", "signature": _signature()} for p in paths})
    monkeypatch.setattr(provenance, "code_fingerprint", lambda rev="HEAD": None)  # no code file for the None one
    frame = leaderboard.table(store, "classification")
    assert frame.set_index("seed")["stale"].to_dict() == {0: False, 1: True, 2: True}  # the dirty one is no row
    assert frame.set_index("seed")["behaviour"].fillna("unknown").to_dict() == {0: "b-today", 1: "b-old", 2: "unknown"}


def test_a_record_without_its_own_fingerprint_takes_its_codes_file(tmp_path, monkeypatch):
    """Records from before fingerprints: their code's file (written by --backfill) names the
    behaviour of their path at their commit."""
    fps = Fingerprints(tmp_path)
    path = _path("gaussian")
    (tmp_path / "fingerprints").mkdir()
    (tmp_path / "fingerprints" / "code1.json").write_text(json.dumps(
        {"canary": fingerprint.CANARY_DIGEST, "paths": {path_name(path): {"id": "b1", "path": path}}}))
    (tmp_path / "fingerprints" / "code2.json").write_text(json.dumps(
        {"canary": "another canary", "paths": {path_name(path): {"id": "b2", "path": path}}}))
    monkeypatch.setattr(provenance, "code_fingerprint", lambda rev="HEAD": {"aaaa": "code1", "bbbb": "code2"}[rev])
    record = {"config": Cell("classification", DEIT, "gaussian", 4, 8).config()}
    assert fps.of_record({**record, "versions": "commit=aaaa"}) == "b1"
    assert fps.of_record({**record, "versions": "commit=bbbb"}) is None  # another canary's signatures never count
    assert fps.of_record({**record, "versions": "commit=aaaa", "behaviour": "b9"}) == "b9"


def test_fingerprints_named_apart_are_compared_by_signature_under_todays_tolerance(tmp_path, monkeypatch):
    """A record's fingerprint, named when another tolerance was in force, is still current when
    its signature matches today's (here: one test image apart) and stale when a bit differs."""
    path = _path("clamp-vit")
    name = path_name(path)
    (tmp_path / "fingerprints").mkdir()
    (tmp_path / "fingerprints" / "code1.json").write_text(json.dumps(
        {"canary": fingerprint.CANARY_DIGEST, "paths": {name: {"id": "b1", "path": path, "signature": _signature()}}}))
    record = {"key": "k", "config": Cell("classification", DEIT, "clamp-vit", 4, 8).config(), "behaviour": "b1",
              "versions": "commit=aaaa"}
    for today, stale in ((_signature(metrics=[80.39, 99.0]), False), (_signature(bits=[4, 8, 7]), True)):
        monkeypatch.setattr(Fingerprints, "today_entries",
                            lambda self, paths, today=today: {name: {"id": "b2", "signature": today}})
        assert Fingerprints(tmp_path).stale([record]) == {"k": stale}


def _write(root: Path, machine: str, code: str, entries: dict) -> None:
    path = root / "fingerprints" / machine / f"{code}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"canary": fingerprint.CANARY_DIGEST, "paths": entries}))


def test_codes_are_compared_on_one_machine_never_across(tmp_path, monkeypatch):
    """Another CPU computes the canary 1e-3 apart: a record is current when its code and today's
    agree on a machine that ran both, whatever this machine's canary says; with no such machine, its
    stored fingerprint against this machine's is the conservative fallback."""
    path = _path("psaq-vit")
    name = path_name(path)
    other = _signature(images=[100.0, 0.1, 0.9, *[-0.21 * i for i in range(1, 17)]])  # 5%: beyond RTOL
    _write(tmp_path, "cpu-a", "code-then", {name: {"id": "a1", "path": path, "signature": _signature()}})
    _write(tmp_path, "cpu-a", "code-today", {name: {"id": "a1", "path": path, "signature": _signature()}})
    monkeypatch.setattr(provenance, "committed_code_tree", lambda: "code-today")
    monkeypatch.setattr(provenance, "record_fingerprint", lambda record: "code-then")
    monkeypatch.setattr(Fingerprints, "today_entries", lambda self, paths: {name: {"id": "b1", "signature": other}})
    record = {"key": "k", "config": Cell("classification", DEIT, "psaq-vit", 4, 8).config(), "behaviour": "a1",
              "versions": "commit=aaaa"}
    assert Fingerprints(tmp_path).stale([record]) == {"k": False}  # compared on cpu-a
    (tmp_path / "fingerprints" / "cpu-a" / "code-today.json").unlink()
    assert Fingerprints(tmp_path).stale([record]) == {"k": True}  # only this machine knows today's code
    _write(tmp_path, provenance.machine(), "code-then", {name: {"id": "b1", "path": path, "signature": other}})
    assert Fingerprints(tmp_path).stale([record]) == {"k": False}  # --backfill ran the record's code here
