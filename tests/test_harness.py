"""Suites, the resumable runner, the result store and the leaderboard."""
import json

import pandas as pd
import pytest

from benchmarks import leaderboard, runner
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
    assert len(cells) == 12 and len({c.key for c in cells}) == 12
    assert {c.model for c in cells} == {"micro_deit_patch4_32", SWIN}
    assert {c.method for c in cells} == {"real", "gaussian"}
    assert {(c.w_bits, c.a_bits) for c in cells} == {(8, 8), (4, 8), (4, 4)}
    assert all(c.n_eval == 10000 and c.seed == 0 and not c.mixed for c in cells)
    assert "micro-classification" in available_suites()


def test_every_suite_expands_to_its_cells():
    baselines = expand(load_suite("micro-classification-baselines"))
    assert len(baselines) == 2 * 3 + 2 * 3 * 3 * 3 + 3
    literal = [c for c in baselines if c.method_options]
    assert {c.method_options["scale_to_input"] for c in literal} == {False} and len(literal) == 3
    clamp = expand(load_suite("micro-classification-clamp"))
    assert len(clamp) == 2 * 5 * 3 + 6 * 2
    assert {c.precision for c in clamp} == {"W8A8", "W4A8", "W4A4", "MP-W4A8", "MP-W5A6"}
    assert sum(c.mixed for c in clamp) == 2 * 2 * 3
    ablations = [c for c in clamp if set(c.method_options) != {"passes"}]
    assert len(ablations) == 12 and all(c.model == "micro_deit_patch4_32" and c.precision in ("W4A8", "W4A4")
                                        for c in ablations)
    paper = expand(load_suite("paper-classification"))
    assert len(paper) == 7 * 5 * 2 + 7
    assert all(c.n_eval is None for c in paper)  # the whole ImageNet validation set


@pytest.mark.parametrize("task, model", [("detection", "micro_mask-rcnn_swin_fmnist"),
                                         ("segmentation", "micro_upernet_deit_fmnist")])
def test_mm_suites_expand_to_their_cells(task, model):
    micro = expand(load_suite(f"micro-{task}"))
    assert len(micro) == 4 * 2 and {c.model for c in micro} == {model} and {c.task for c in micro} == {task}
    assert {c.method for c in micro} == {"real", "gaussian", "psaq-vit-v2", "clamp-vit"}
    assert {c.precision for c in micro} == {"W8A8", "W4A8"} and all(c.n_eval == 300 for c in micro)
    assert [c.method_options for c in micro if c.method == "clamp-vit"] == [{"passes": 2}] * 2
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
    assert "task_options" not in base.config()  # keys of cells stored before the field existed hold


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
    assert list(frame.columns) == leaderboard.COLUMNS
    row = frame.iloc[0]
    assert row["precision"] == "W4A8" and row["calibration"] == "gaussian:32" and row["n_eval"] == 200
    assert row["delta"] == pytest.approx(row["quant_value"] - row["fp_value"], abs=2e-3)
    assert row["compression_ratio"] > 3 and "torch=" in row["versions"]
    record = json.loads(store.path(cell()).read_text())
    assert record["config"] == cell().config()


def test_published_report_joins_reproduced_rows(store):
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
