"""Suites, the resumable runner, the result store and the leaderboard."""
import argparse
import hashlib
import json

import pandas as pd
import pytest
import torch

from benchmarks import leaderboard, provenance, runner
from benchmarks.cell import Cell, parse_precision
from benchmarks.runner import RunOptions, run_cells
from benchmarks.store import ResultStore
from benchmarks.suites import available_suites, expand, load_suite
from clamp.registry import register_method

SWIN = "micro_swin_patch2_window4_32"


@register_method("always-fails")
class AlwaysFails:
    label_free = True

    def quantize(self, task, model, config, seed):
        raise RuntimeError("boom")


@pytest.fixture(autouse=True)
def clean_checkout(monkeypatch):
    """Records made while a developer's tree has uncommitted changes are '+dirty' and never rows;
    these tests are about the harness, so they run as from a clean commit."""
    from benchmarks import provenance
    monkeypatch.setattr(provenance, "commit", lambda: "0123456789ab")


@pytest.fixture
def no_canaries(monkeypatch):
    """For hand-made records of models no canary needs to run here (staleness is not the point):
    every path's canary 'fails today', so every row is stale."""
    from benchmarks import fingerprint
    monkeypatch.setattr(fingerprint, "run_canaries",
                        lambda root, paths: [{"path": p, "error": "not run"} for p in paths])


@pytest.fixture
def store(tmp_path):
    return ResultStore(tmp_path / "results")


def cell(method="gaussian", **kw):
    return Cell("classification", SWIN, method, 4, 8, n_eval=200, **kw)


def test_precision_parsing():
    assert parse_precision("W4A8") == (4, 8, False)
    assert parse_precision("MP-W4A8") == (4, 8, True)
    with pytest.raises(ValueError, match="write W4A8"):
        parse_precision("4/8")


def test_micro_classification_suite_expands_to_its_cells():
    cells = expand(load_suite("micro-classification"))
    assert len(cells) == 24 and len({c.key for c in cells}) == 24
    assert {c.model for c in cells} == {"micro_deit_patch4_32", SWIN}
    assert {c.method for c in cells} == {"real", "gaussian"}
    assert {(c.w_bits, c.a_bits) for c in cells} == {(8, 8), (6, 6), (4, 8), (4, 4)}
    assert sum(c.quant_options["layout"] == "reference" for c in cells) == 16
    assert {c.method for c in cells if c.quant_options["layout"] == "inputs"} == {"real"}
    assert all(c.n_eval == 10000 and c.seed == 0 and not c.mixed for c in cells)
    assert "micro-classification" in available_suites()


def test_every_suite_expands_to_its_cells():
    baselines = expand(load_suite("micro-classification-baselines"))
    assert len(baselines) == 2 * 4 + 2 * 3 * 4 * 3 + 3
    literal = [c for c in baselines if c.method_options]
    assert {c.method_options["scale_to_input"] for c in literal} == {False} and len(literal) == 3
    clamp = expand(load_suite("micro-classification-clamp"))
    assert len(clamp) == 2 * 5 * 3 + 7 * 2 * 3 + 2 * 3
    assert {c.precision for c in clamp} == {"W8A8", "W6A6", "W4A8", "W4A4", "MP-W4A8"}
    ablations = [c for c in clamp if c.method_options]
    assert len(ablations) == 48 and all(c.model == "micro_deit_patch4_32" and c.precision in ("W4A8", "W4A4", "MP-W4A8")
                                        for c in ablations)
    inputs = expand(load_suite("micro-classification-inputs"))
    assert {c.quant_options["layout"] for c in inputs} == {"inputs"}
    # the keys they were stored under before layouts existed (a committed record's key)
    assert "262c35b7dc7f7dae" in {c.key for c in inputs}
    paper = expand(load_suite("paper-classification"))
    assert len(paper) == 7 * 5 * 4 + 7
    assert all(c.n_eval is None for c in paper)  # the whole ImageNet validation set


@pytest.mark.parametrize("task, model", [("detection", "micro_mask-rcnn_swin_fmnist"),
                                         ("segmentation", "micro_upernet_deit_fmnist")])
def test_mm_suites_expand_to_their_cells(task, model):
    micro = expand(load_suite(f"micro-{task}"))
    assert len(micro) == 4 * 2 * 2 and {c.model for c in micro} == {model} and {c.task for c in micro} == {task}
    assert {c.method for c in micro} == {"real", "gaussian", "psaq-vit-v2", "clamp-vit"}
    assert {c.precision for c in micro} == {"W8A8", "W4A8"} and all(c.n_eval == 300 for c in micro)
    assert [c.method_options for c in micro if c.method == "clamp-vit"] == [{"passes": 2}] * 4
    assert sorted(c.quant_options["layout"] for c in micro) == ["inputs"] * 8 + ["reference"] * 8
    paper = expand(load_suite(f"paper-{task}"))
    assert len(paper) == {"detection": 4, "segmentation": 3}[task] * 4 * 2
    assert all(c.n_eval is None and not c.method_options for c in paper)


def test_key_changes_with_every_field_but_not_with_order():
    base = cell()
    assert base.key == cell().key
    variants = [cell(seed=1), cell(method_options={"n": 8}), cell(quant_options={"a_observer": "omse"}),
                Cell("classification", SWIN, "gaussian", 4, 4, n_eval=200), cell(mixed=True),
                cell(task_options={"quant_neck": True})]
    assert len({base.key, *(v.key for v in variants)}) == 7
    # keys of cells stored before task_options and weights existed hold: they hash without them
    legacy = {k: v for k, v in base.config().items() if k not in ("task_options", "weights")}
    blob = json.dumps(legacy, sort_keys=True, separators=(",", ":")).encode()
    assert base.key == hashlib.sha256(blob).hexdigest()[:16]


def test_rerun_skips_finished_cells_and_redoes_corrupt_ones(store, monkeypatch):
    cells = [cell(seed=0), cell(seed=1)]
    first = run_cells(cells, RunOptions(device="cpu"), store)
    assert [r["status"] for r in first] == ["ok", "ok"]
    calls = []
    real_run_cell = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda c, o: calls.append(c.key) or real_run_cell(c, o))
    assert run_cells(cells, RunOptions(device="cpu"), store) == first
    assert calls == []
    store.path(cells[1]).write_text('{"key": "')  # a torn or corrupt file is not trusted
    run_cells(cells, RunOptions(device="cpu"), store)
    assert calls == [cells[1].key]


def test_fp_metrics_are_cached_per_committed_code_and_never_for_uncommitted(monkeypatch, tmp_path):
    """A cached FP evaluation made by other code (a metric added since, a fix) is not reused."""
    from tasks import make_task

    monkeypatch.setattr(runner, "CACHE", tmp_path)
    task, c, options = make_task("classification", SWIN, n_eval=200), cell(), RunOptions(device="cpu")
    evaluations = []
    monkeypatch.setattr(task, "evaluate", lambda model: evaluations.append(model) or {"top1": float(len(evaluations))})
    monkeypatch.setattr(runner, "committed_code", lambda: "aaaa")
    first = runner._fp_metrics(task, c, options)
    assert runner._fp_metrics(task, c, options) == first and len(evaluations) == 1
    monkeypatch.setattr(runner, "committed_code", lambda: "bbbb")
    assert runner._fp_metrics(task, c, options) == {"top1": 2.0}
    monkeypatch.setattr(runner, "committed_code", lambda: None)  # uncommitted changes
    assert runner._fp_metrics(task, c, options) == {"top1": 3.0}
    assert runner._fp_metrics(task, c, options) == {"top1": 4.0}
    assert len(list(tmp_path.glob("fp/*.json"))) == 2


def test_failing_cell_is_recorded_and_the_rest_finish(store):
    records = run_cells([cell("always-fails"), cell()], RunOptions(device="cpu"), store)
    assert records[0]["status"] == "failed" and "boom" in records[0]["error"]
    assert records[1]["status"] == "ok"
    assert len(leaderboard.table(store, "classification")) == 1


def test_leaderboard_is_reproducible_and_complete(store):
    run_cells([cell(), cell(seed=3)], RunOptions(device="cpu"), store)
    path = leaderboard.write_csv(store, "classification")
    first = path.read_bytes()
    assert leaderboard.write_csv(store, "classification").read_bytes() == first
    frame = leaderboard.table(store, "classification")
    assert list(frame.columns)[:len(leaderboard.COLUMNS)] == leaderboard.COLUMNS
    assert {"quant_metrics.top1", "quant_metrics.top5", "versions.torch", "versions.commit"} <= set(frame.columns)
    row = frame.iloc[0]
    assert row["precision"] == "W4A8" and row["calibration"] == "gaussian:32" and row["n_eval"] == 200
    assert row["delta"] == pytest.approx(row["quant_value"] - row["fp_value"], abs=2e-3)
    assert row["compression_ratio"] > 3 and row["versions.torch"] == torch.__version__.split("+")[0]
    assert row["quant_metrics.top1"] == row["quant_value"]
    record = json.loads(store.path(cell()).read_text())
    assert record["config"] == cell().config()


def test_published_report_joins_reproduced_rows(store, no_canaries):
    from benchmarks.published import report
    model = "deit_tiny_patch16_224.fb_in1k"
    for seed, value in ((0, 65.0), (1, 66.0)):
        c = Cell("classification", model, "psaq-vit", 4, 8, seed=seed)
        store.save(c, {"status": "ok", "metric": "top1", "fp": {"top1": 72.1},
                       "quant": {"top1": value, "n_eval": 50000},
                       "compression": {"mean_w_bits": 4.0, "mean_a_bits": 8.0, "compression_ratio": 7.1,
                                       "size_mb": 3.2, "n_params": 5_700_000},
                       "report": {"calibration": "psaq-vit:32", "n_calib": 32}, "wall_s": 1.0, "device": "test",
                       "versions": "test", "timestamp": "2026-11-28T00:00:00+00:00"})
    frame = report(store).set_index(["model", "method", "precision"])
    row = frame.loc[(model, "psaq-vit", "W4A8")]
    assert row["published"] == 65.57 and row["reproduced"] == pytest.approx(65.5)
    assert row["difference"] == pytest.approx(65.5 - 65.57)
    assert frame.loc[(model, "fp", "FP")]["reproduced"] == pytest.approx(72.1)
    assert pd.isna(frame.loc[("deit_small_patch16_224.fb_in1k", "psaq-vit", "W4A8")]["reproduced"])
    assert frame.loc[("deit_small_patch16_224.fb_in1k", "psaq-vit", "W4A8")]["status"].startswith("not run (needs")
    assert row["status"] == "reproduced"


def test_seeds_on_other_weights_are_never_averaged_together(store, no_canaries):
    """Two seeds of one cell configuration computed on different weights of the same model (a
    backbone converted by older code, say) stay two summary rows, labelled by their weights."""
    model = "pretrained_dinov2s_fmnist"
    for seed, value, weights in ((0, 77.0, "aaaa"), (1, 79.0, "bbbb"), (2, 81.0, "bbbb")):
        store.save(Cell("classification", model, "real", 8, 8, seed=seed),
                   {"status": "ok", "metric": "top1", "fp": {"top1": 83.5}, "quant": {"top1": value, "n_eval": 2000},
                    "compression": {"mean_w_bits": 8.0, "mean_a_bits": 8.0, "compression_ratio": 3.9,
                                    "size_mb": 21.6, "n_params": 21_000_000},
                    "report": {"calibration": "real:32", "n_calib": 32}, "wall_s": 1.0, "device": "test",
                    "weights_id": weights, "versions": "test", "timestamp": "2026-11-30T00:00:00+00:00"})
    summ = leaderboard.summary(leaderboard.table(store, "classification")).set_index("weights_id")
    assert summ.loc["aaaa", "quant_mean"] == 77.0 and summ.loc["aaaa", "seeds"] == 1
    assert summ.loc["bbbb", "quant_mean"] == 80.0 and summ.loc["bbbb", "seeds"] == 2
    table = leaderboard.markdown(summ.reset_index())
    assert "real [weights aaaa] | 77.00 † |" in table and "real [weights bbbb] | 80.00 ± 1.41 † |" in table


def test_failed_recompute_keeps_the_good_record_and_its_row(store, monkeypatch):
    good = cell()
    run_cells([good], RunOptions(device="cpu"), store)
    leaderboard.write_csv(store, "classification")
    record, csv = store.path(good).read_bytes(), (store.root / "classification.csv").read_bytes()

    def boom(c, o):
        raise RuntimeError("dataset vanished")
    monkeypatch.setattr(runner, "run_cell", boom)
    [latest] = run_cells([good], RunOptions(device="cpu", force=True), store)
    leaderboard.write_csv(store, "classification")
    assert latest["status"] == "failed" and "dataset vanished" in latest["error"]
    assert store.path(good).read_bytes() == record
    assert (store.root / "classification.csv").read_bytes() == csv
    assert json.loads(store.failed_path(good).read_text())["status"] == "failed"
    assert store.done(good)


def test_records_are_world_readable_and_bad_ones_are_named(store):
    good = cell()
    run_cells([good], RunOptions(device="cpu"), store)
    assert store.path(good).stat().st_mode & 0o777 == 0o644
    torn = store.path(good).with_name("0123456789abcdef.json")
    torn.write_text('{"key": "0123')
    assert len(leaderboard.table(store, "classification")) == 1
    assert any(str(torn) in bad and "truncated" in bad for bad in store.bad)


def test_records_name_their_schema_and_old_ones_read_as_they_were_written(store):
    """A record stores every cell field (schema 2); a schema-1 record, which stored the key's form
    (no layout: the inputs layout, the only one then), reads back with its layout explicit."""
    old = Cell("classification", "micro_deit_patch4_32", "gaussian", 8, 8, n_eval=16,
               quant_options={"layout": "inputs"})
    run_cells([old], RunOptions(device="cpu"), store)
    record = json.loads(store.path(old).read_text())
    assert record["schema_version"] == 2 and record["config"]["quant_options"]["layout"] == "inputs"
    v1 = {k: v for k, v in record.items() if k != "schema_version"}
    v1["config"] = {k: v for k, v in record["config"].items() if k not in ("task_options", "weights")}
    v1["config"]["quant_options"] = {}
    store.path(old).write_text(json.dumps(v1))
    [read] = list(store.records("classification"))
    assert read["config"] == record["config"] and read["schema_version"] == 2
    assert leaderboard.table(store, "classification")["layout"].tolist() == ["inputs"]


def test_checkpoint_is_part_of_the_cell(tmp_path):
    from benchmarks.runner import with_weights
    weights = tmp_path / "other.safetensors"
    weights.write_bytes(b"other weights")
    [other] = with_weights([cell()], {"*": str(weights)})
    assert other.weights and other.key != cell().key and cell().config()["weights"] is None
    [random] = with_weights([cell()], {"random": "x", cell().model: "random"})
    assert random.weights == "random" and random.key not in (cell().key, other.key)


def test_suite_names_a_checkpoint_per_model(tmp_path):
    """A suite's ``checkpoints`` table (paths relative to the suite file) gives one model other
    weights: only its cells change key; --checkpoint MODEL=PATH does the same from the CLI."""
    from benchmarks import suites
    from benchmarks.cli import _checkpoints
    from benchmarks.runner import with_weights
    (tmp_path / "w.pth").write_bytes(b"other weights")
    path = tmp_path / "s.toml"
    path.write_text('task = "classification"\ncheckpoints = { micro_deit_patch4_32 = "w.pth" }\n'
                    '[[group]]\nmodels = ["micro_deit_patch4_32", "micro_swin_patch2_window4_32"]\n'
                    'methods = ["gaussian"]\nprecisions = ["W8A8"]\n')
    suite = suites.load_suite(str(path))
    plain = suites.expand(suite)
    for table in (_checkpoints(argparse.Namespace(checkpoint=[]), suite),
                  _checkpoints(argparse.Namespace(checkpoint=[f"micro_deit_patch4_32={tmp_path / 'w.pth'}"]))):
        deit, swin = with_weights(plain, table)
        assert deit.weights and deit.key != plain[0].key and swin == plain[1]


def test_stale_rows_are_marked_and_dirty_ones_never_rows(store):
    """A new record carries its path's fingerprint (its canary ran at this code): current; another
    behaviour (of other code, no canary of it here) is stale; a dirty record is no row at all."""
    run_cells([cell()], RunOptions(device="cpu"), store)
    record = json.loads(store.path(cell()).read_text())
    file = store.root / "fingerprints" / provenance.machine() / f"{record['code']}.json"
    assert record["behaviour"] and file.is_file()
    assert not leaderboard.table(store, "classification")["stale"].any()
    store.path(cell()).write_text(json.dumps({**record, "code": "0" * 12, "behaviour": "0" * 10}))
    assert leaderboard.table(store, "classification")["stale"].all()
    dirty = {**record, "versions": record["versions"].split(" commit=")[0] + " commit=abc+dirty"}
    store.path(cell()).write_text(json.dumps(dirty))
    assert leaderboard.table(store, "classification").empty


SUITE = """task = "classification"
n_eval = 100
[[group]]
models = ["micro_swin_patch2_window4_32"]
methods = ["gaussian"]
precisions = ["W8A8"]
seeds = [0, 1, 2, 3]
"""


def test_two_concurrent_suites_compute_each_cell_once(tmp_path):
    import subprocess
    import sys
    suite = tmp_path / "four.toml"
    suite.write_text(SUITE)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks", "suite", str(suite), "--results-dir", str(tmp_path / "r"),
           "--device", "cpu"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum(o.count(": running (") for o in outputs) == 4
    records = [json.loads(p.read_text()) for p in (tmp_path / "r" / "cells" / "classification").glob("*.json")]
    rows = pd.read_csv(tmp_path / "r" / "classification.csv")
    assert len(records) == 4  # rows: one per record, but none from a checkout with uncommitted changes
    assert len(rows) == sum("+dirty" not in r["versions"] for r in records)


RUN = ["run", "--model", SWIN, "--method", "gaussian", "--w-bits", "4", "--a-bits", "8", "--n-eval", "50"]


@pytest.mark.parametrize("extra, message", [
    (["--option", "bogus=1"], "bad options for method 'gaussian'"),
    (["--option", "n=abc"], "bad option n='abc'"),
    (["--n-eval", "0"], "not a positive number of images"),
    (["--n-eval", "-5"], "not a positive number of images"),
    (["--device", "nonsense"], "unknown device"),
    (["--device", "cuda:7"], "not available here"),
    (["--quant-option", "layout=upside-down"], "unknown layout"),
    (["--quant-option", "symmetric=true"], "belong to layout=inputs"),
    (["--checkpoint", "/nonexistent.safetensors"], "does not exist"),
    (["--data-root", "/nonexistent"], "is not a folder"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    from benchmarks.cli import main
    with pytest.raises(SystemExit) as exit_:
        main([*RUN, *extra, "--results-dir", str(tmp_path / "r")])
    text = str(exit_.value.code)
    assert exit_.value.code != 0 and message in text and "\n" not in text
    assert not list((tmp_path / "r").rglob("*.json"))


def test_bare_option_and_unwritable_results_are_refused(tmp_path):
    from benchmarks.cli import main
    with pytest.raises(SystemExit) as exit_:
        main([*RUN, "--option", "n", "--results-dir", str(tmp_path / "r")])
    assert exit_.value.code == 2  # argparse: "'n' is not KEY=VALUE"
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # no folder can be made under a file, not even by root
    with pytest.raises(SystemExit, match="cannot write results"):
        main([*RUN, "--results-dir", str(blocker / "results")])


@pytest.mark.parametrize("text, message", [
    ('[[group]]\nmodels = ["m"]\nmethods = ["real"]\nprecisions = ["W8A8"]\n', "has no `task`"),
    ('task = "classification"\n[[group]]\nmethods = ["real"]\nprecisions = ["W8A8"]\n', "has no `models`"),
    ('task = "classification"\n[[group]]\nmodels = ["m"]\nmethods = ["real"]\nprecisions = "W8A8"\n',
     "must be a list"),
])
def test_malformed_suite_is_one_line(tmp_path, text, message):
    from benchmarks.cli import main
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SystemExit, match=message):
        main(["suite", str(path), "--results-dir", str(tmp_path / "r")])


def test_missing_dataset_stops_the_suite_before_its_first_cell(tmp_path, monkeypatch):
    from benchmarks.cli import main
    from tasks.micro import fashion_mnist
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "nowhere")
    monkeypatch.setenv("CLAMP_FASHION_MNIST", str(tmp_path / "nowhere"))
    suite = tmp_path / "four.toml"
    suite.write_text(SUITE)
    with pytest.raises(SystemExit, match="Fashion-MNIST not found") as exit_:
        main(["suite", str(suite), "--results-dir", str(tmp_path / "r")])
    assert "\n" not in str(exit_.value.code)
    assert not (tmp_path / "r" / "cells").exists()


def test_truncated_dataset_file_is_one_line(tmp_path):
    from tasks.micro import fashion_mnist
    for split in fashion_mnist.FILES.values():
        for name in split:
            src = fashion_mnist._find(fashion_mnist.resolve_root(), name)
            (tmp_path / src.name).write_bytes(src.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or not an IDX file") as err:
        fashion_mnist.check(tmp_path)
    assert "\n" not in str(err.value)


def test_sigkill_at_three_moments_loses_nothing_finished(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    suite = tmp_path / "four.toml"
    suite.write_text(SUITE)
    results = tmp_path / "r"
    cells_dir = results / "cells" / "classification"
    cmd = [sys.executable, "-m", "benchmarks", "suite", str(suite), "--results-dir", str(results), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished: dict[str, bytes] = {}
    for records_before_kill in (0, 1, 2):  # while starting up, after the first record, after the second
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and len(list(cells_dir.glob("*.json"))) <= records_before_kill \
                and proc.poll() is None:
            time.sleep(0.05 if records_before_kill else 1.5)
            if not records_before_kill:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for path in cells_dir.glob("*.json"):
            assert finished.setdefault(path.name, path.read_bytes()) == path.read_bytes()
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    for name, data in finished.items():
        assert (cells_dir / name).read_bytes() == data  # a finished record is never rewritten
    assert len(list(cells_dir.glob("*.json"))) == 4
    assert not [p for p in results.rglob(".*") if p.is_file()]  # no temporary file left behind


def test_pickled_checkpoint_is_not_executed(tmp_path):
    import pickle

    from benchmarks.cli import main

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(SystemExit, match="pass a matching --checkpoint") as exit_:
        main([*RUN, "--checkpoint", str(evil), "--results-dir", str(tmp_path / "r")])
    assert "\n" not in str(exit_.value.code)
    assert not (tmp_path / "pwned").exists()


def test_an_estimate_from_cells_of_other_options_says_so():
    """A cell at ten times the budget is estimated from the model's other cells, and marked."""
    from benchmarks.dry_run import _estimate
    timed = [{"config": cell(method_options={"n": 8}).config(), "wall_s": 60.0}]
    assert _estimate(cell(method_options={"n": 8}), timed) == (60.0, True)
    assert _estimate(cell(method_options={"n": 80}), timed) == (60.0, False)
    assert _estimate(Cell("classification", "other", "gaussian", 4, 8), timed) == (None, False)


def test_dry_run_lists_and_estimates_and_a_finished_suite_says_so(tmp_path, capsys):
    from benchmarks.cli import main
    suite = tmp_path / "four.toml"
    suite.write_text(SUITE)
    store = ResultStore(tmp_path / "r")
    cells = expand(load_suite(str(suite)))
    run_cells(cells[:1], RunOptions(device="cpu"), store)
    main(["suite", str(suite), "--results-dir", str(store.root), "--dry-run"])
    out = capsys.readouterr().out
    assert out.startswith("3 to run (about 0 min), 1 finished") and out.count("  run ") == 3
    assert not list((store.root / "cells" / "classification").glob(f"{cells[1].key}*"))  # ran nothing
    run_cells(cells, RunOptions(device="cpu"), store)
    main(["suite", str(suite), "--results-dir", str(store.root)])
    out = capsys.readouterr().out
    assert out.startswith("all 4 cells of") and "--force" in out and "| micro_swin_patch2_window4_32 |" in out
    assert "†" not in out and out.strip().splitlines()[-1].startswith("the web leaderboard of every cell:")
    # one cell of other code (no canary of it here) on another behaviour: stale, marked in the table, and
    # what --stale --dry-run would run
    record = json.loads(store.path(cells[2]).read_text())
    store.path(cells[2]).write_text(json.dumps({**record, "code": "0" * 12, "behaviour": "0" * 10}))
    main(["suite", str(suite), "--results-dir", str(store.root), "--dry-run"])
    assert capsys.readouterr().out.startswith("0 to run (no estimate), 4 finished (1 of them stale)")
    main(["suite", str(suite), "--results-dir", str(store.root), "--dry-run", "--stale"])
    out = capsys.readouterr().out
    assert out.startswith("1 to run (about 0 min), 4 finished (1 of them stale, recomputed)")
    assert f"  stale {cells[2].key}" in out
    main(["suite", str(suite), "--results-dir", str(store.root)])
    assert "† stale:" in capsys.readouterr().out


def test_gallery_is_copied_next_to_the_leaderboard_and_linked_relatively(store, tmp_path):
    images = tmp_path / "cache" / "abc123.pt"
    images.parent.mkdir()
    images.write_bytes(b"")
    images.with_suffix(".png").write_bytes(b"\x89PNG fake grid")
    c = cell(method="psaq-vit")
    store.save(c, {"status": "ok", "metric": "top1", "fp": {"top1": 80.0}, "quant": {"top1": 79.0, "n_eval": 200},
                   "compression": {"mean_w_bits": 4.0, "mean_a_bits": 8.0, "compression_ratio": 7.0,
                                   "size_mb": 0.1, "n_params": 1000},
                   "report": {"calibration": "psaq-vit:32", "n_calib": 32, "images": str(images)},
                   "wall_s": 1.0, "device": "test", "versions": "torch=x commit=0123456789ab",
                   "timestamp": "2026-11-29T00:00:00+00:00"})
    frame = leaderboard.table(store, "classification")
    assert frame.loc[0, "gallery"] == "galleries/abc123.png"
    assert (store.root / "galleries" / "abc123.png").read_bytes() == b"\x89PNG fake grid"
    images.with_suffix(".png").unlink()  # a fresh clone has no cache: the committed copy still counts
    assert leaderboard.table(store, "classification").loc[0, "gallery"] == "galleries/abc123.png"


@pytest.mark.parametrize("suite, n, source", [("paper-classification", 7, "hf://timm/"),
                                              ("paper-detection", 4, "https://")])
def test_fetch_offline_names_each_missing_file_and_its_source(suite, n, source, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from benchmarks.cli import main
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty caches: nothing is fetched yet
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(SystemExit) as exit_:
        main(["fetch", suite])
    lines = capsys.readouterr().out.strip().splitlines()
    assert exit_.value.code == 1 and len(lines) == n
    assert all(line.startswith("missing") and f"(from {source}" in line for line in lines)


def _compared_row(method, value, layout="reference", config="", seed=0, precision="W4A4"):
    return {"model": SWIN, "precision": precision, "layout": layout, "weights_id": "w1", "n_eval": 10000,
            "method": method, "ablation": config, "seed": seed, "quant_value": value}


def test_compare_holds_layout_and_options_equal_and_says_what_it_left_out():
    """`real` under the reference and the inputs layout are two lines, never one mean; ablations and
    conditions the compared method has no cell for are left out, and said so."""
    from benchmarks.cli import comparison
    mine = pd.DataFrame([_compared_row("new", 30.0), _compared_row("new", 32.0, seed=1),
                         _compared_row("new", 70.0, layout="inputs")])
    theirs = pd.DataFrame([_compared_row("real", 27.47), _compared_row("real", 78.33, layout="inputs"),
                           _compared_row("clamp-vit", 40.0), _compared_row("clamp-vit", 90.0, config="search=False"),
                           _compared_row("real", 80.0, precision="W8A8")])
    text = comparison(mine, theirs, "new")
    lines = text.splitlines()
    reference = next(line.split() for line in lines if " reference " in line)
    inputs = next(line.split() for line in lines if " inputs " in line)
    header = lines[0].replace("clamp-vit seeds", "clamp-vit_seeds").replace("real seeds", "real_seeds")
    header = header.replace("delta vs ", "delta_vs_").split()
    ref, inp = dict(zip(header, reference, strict=True)), dict(zip(header, inputs, strict=True))
    assert ref["new"] == "31.0" and ref["seeds"] == "2" and ref["real"] == "27.47" and ref["clamp-vit"] == "40.0"
    assert float(ref["delta_vs_real"]) == pytest.approx(31.0 - 27.47, abs=0.006)
    assert inp["real"] == "78.33" and inp["clamp-vit_seeds"] == "0"
    assert "left out: 1 rows with non-default options (clamp-vit search=False)" in text
    assert f"left out: 1 rows under conditions that new has no cell for ({SWIN} W8A8 reference)" in text
    assert len([line for line in lines if SWIN in line and "left out" not in line]) == 2


def test_a_method_without_mixed_precision_refuses_an_mp_cell_and_suites_skip_it(tmp_path):
    from benchmarks.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--model", SWIN, "--method", "psaq-vit-v2", "--w-bits", "4", "--a-bits", "8", "--mixed",
              "--results-dir", str(tmp_path / "r")])
    assert "psaq-vit-v2 has no mixed-precision search" in str(exit_.value.code)
    assert "\n" not in str(exit_.value.code) and not list((tmp_path / "r").rglob("*.json"))
    suite = tmp_path / "mp.toml"
    suite.write_text(f'task = "classification"\n[[group]]\nmodels = ["{SWIN}"]\n'
                     'methods = ["psaq-vit-v2", "gaussian", "clamp-vit"]\nprecisions = ["W4A8", "MP-W4A8"]\n')
    cells = expand(load_suite(str(suite)))
    assert sorted((c.method, c.precision) for c in cells) == [
        ("clamp-vit", "MP-W4A8"), ("clamp-vit", "W4A8"), ("gaussian", "W4A8"), ("psaq-vit-v2", "W4A8")]


def test_run_without_n_eval_is_the_suites_cell(monkeypatch):
    """`run` without --n-eval evaluates the whole split and counts it as the suites do: the key
    of the committed cell."""
    from benchmarks import cli
    seen = []
    monkeypatch.setattr(cli, "_run", lambda cells, *a, **k: seen.extend(cells) or [{"status": "ok"}])
    with pytest.raises(SystemExit):
        cli.main(["run", "--model", "micro_deit_patch4_32", "--method", "real", "--w-bits", "4", "--a-bits", "8"])
    suite = {c.key for c in expand(load_suite("micro-classification"))}
    assert seen[0].n_eval == 10000 and seen[0].key in suite


def test_readme_tables_are_generated_between_markers_and_byte_identical_on_a_rerun(store, no_canaries, tmp_path):
    """The headline tables: default options under the reference layout (a budget option is no
    ablation), written between the markers only; a second build changes no byte."""
    for method, options in (("gaussian", {}), ("psaq-vit", {"steps": 50}), ("psaq-vit", {"scale_to_input": False})):
        store.save(Cell("classification", SWIN, method, 4, 8, n_eval=200, method_options=options),
                   {"status": "ok", "metric": "top1", "fp": {"top1": 85.0}, "quant": {"top1": 80.0, "n_eval": 200},
                    "compression": {"mean_w_bits": 4.0, "mean_a_bits": 8.0, "compression_ratio": 7.9,
                                    "size_mb": 1.0, "n_params": 10},
                    "report": {"calibration": "x:32", "n_calib": 32}, "wall_s": 1.0, "device": "test",
                    "versions": "test", "timestamp": "2026-12-01T00:00:00+00:00"})
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{leaderboard.MARKERS[0]}\nold\n{leaderboard.MARKERS[1]}\nafter\n")
    leaderboard.write_readme(store, ("classification",), readme)
    first = readme.read_bytes()
    text = first.decode()
    assert text.startswith("# title\n") and text.endswith(f"{leaderboard.MARKERS[1]}\nafter\n") and "old" not in text
    assert "| gaussian |" in text and "| psaq-vit (steps=50) |" in text and "scale_to_input" not in text
    leaderboard.write_readme(store, ("classification",), readme)
    assert readme.read_bytes() == first
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert leaderboard.write_readme(store, ("classification",), plain) is None and plain.read_text() == "no markers\n"
