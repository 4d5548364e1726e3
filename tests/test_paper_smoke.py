"""The paper path on every commit: the smallest paper model of each task (DeiT-T, Mask R-CNN
Swin-T, UperNet DeiT-S) at paper resolution with random weights, on tiny generated datasets in
the real ImageNet / COCO / ADE20K layouts (the subset of `tox -e paper-smoke -- --ci`: every
method on DeiT-T, real data and Gaussian noise on the mm models; the whole smoke suite, every
method on every paper model, runs on demand)."""
from benchmarks import smoke


def test_paper_models_run_every_method_on_the_real_layouts(tmp_path):
    summary = smoke.run(ci=True, device="cpu", folder=tmp_path)
    failed = [f"{r['model']} {r['method']} {r['precision']}: {r['error']}" for r in summary if r["status"] != "ok"]
    assert not failed, failed
    assert {r["task"] for r in summary} == set(smoke.SUITES)
    assert len(summary) == 5 + 2 + 2
    assert len(list((tmp_path / "results" / "cells").glob("*/*.json"))) == len(summary)  # all in tmp_path
