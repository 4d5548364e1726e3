"""The paper path on every commit: the smallest paper model of each task (DeiT-T, Mask R-CNN
Swin-T, UperNet DeiT-S) at paper resolution with random weights, on tiny generated datasets in
the real ImageNet / COCO / ADE20K layouts, every method at its smallest budget (the subset of
`tox -e paper-smoke -- --ci`; the whole smoke suite runs on demand)."""
from benchmarks import smoke


def test_paper_models_run_every_method_on_the_real_layouts(tmp_path):
    summary = smoke.run(ci=True, device="cpu", folder=tmp_path)
    failed = [f"{r['model']} {r['method']} {r['precision']}: {r['error']}" for r in summary if r["status"] != "ok"]
    assert not failed, failed
    assert {r["task"] for r in summary} == set(smoke.SUITES)
    assert len(summary) == 6 + 5 + 5  # classification: 5 methods + MP; mm: 4 label-free methods + MP
    assert len(list((tmp_path / "results" / "cells").glob("*/*.json"))) == len(summary)  # all in tmp_path
