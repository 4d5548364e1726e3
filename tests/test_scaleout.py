"""Kill -9 in the middle, submitit's local executor, distributed evaluation, a plugin method."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.cell import Cell
from benchmarks.runner import RunOptions, run_cells
from benchmarks.scaleout import make_executor
from benchmarks.store import ResultStore
from tasks.classification import ClassificationTask

SWIN = "micro_swin_patch2_window4_32"
ROOT = Path(__file__).resolve().parent.parent
PLUGIN = Path(__file__).parent / "plugin_example"


def cli(args, tmp_path, **kw):
    env = {**os.environ, "CLAMP_RESULTS": str(tmp_path / "results"), "PYTHONPATH": f"{ROOT}:{PLUGIN}"}
    return subprocess.Popen([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def write_suite(tmp_path, seeds, n_eval=1000):
    path = tmp_path / "suite.toml"
    path.write_text(f'task = "classification"\nn_eval = {n_eval}\n[[group]]\nmodels = ["{SWIN}"]\n'
                    f'methods = ["gaussian"]\nprecisions = ["W8A8"]\nseeds = {seeds}\n')
    return path


def test_sigkill_loses_nothing_finished(tmp_path):
    suite = write_suite(tmp_path, [0, 1, 2, 3], n_eval=3000)
    cells_dir = tmp_path / "results" / "cells" / "classification"
    proc = cli(["suite", str(suite), "--device", "cpu"], tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(cells_dir.glob("*.json"))) < 1:
        time.sleep(0.2)
    time.sleep(1.5)  # now inside a later cell
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.read_text() for p in cells_dir.glob("*.json")}
    assert 1 <= len(finished) < 4
    for text in finished.values():
        assert json.loads(text)["status"] == "ok"  # every file left behind is whole
    _, err = cli(["suite", str(suite), "--device", "cpu"], tmp_path).communicate(timeout=600)
    assert f"{len(finished)} finished, {4 - len(finished)} to run" in err
    after = {p.name: p.read_text() for p in cells_dir.glob("*.json")}
    assert len(after) == 4
    assert all(after[name] == text for name, text in finished.items())  # not recomputed, not lost


def test_submitit_local_executor_gives_the_same_rows(tmp_path):
    cell = Cell("classification", SWIN, "gaussian", 4, 8, n_eval=300)
    here = run_cells([cell], RunOptions(device="cpu"), ResultStore(tmp_path / "a"))[0]
    there = run_cells([cell], RunOptions(device="cpu"), ResultStore(tmp_path / "b"),
                      executor=make_executor("submitit-local"))[0]
    for key in ("status", "fp", "quant", "compression", "report", "config", "key"):
        assert here[key] == there[key]


def _evaluate_shard(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    task = ClassificationTask(SWIN, n_eval=1000)
    metrics = task.evaluate(task.build_model())
    if rank == 0:
        Path(out_file).write_text(json.dumps(metrics))
    dist.destroy_process_group()


def test_distributed_evaluation_on_two_gloo_processes_matches_one(tmp_path):
    mp.spawn(_evaluate_shard, args=(2, str(tmp_path / "init"), str(tmp_path / "out.json")), nprocs=2)
    task = ClassificationTask(SWIN, n_eval=1000)
    assert json.loads((tmp_path / "out.json").read_text()) == task.evaluate(task.build_model())


def test_a_plugin_method_runs_in_compare(tmp_path):
    suite = write_suite(tmp_path, [0], n_eval=300)
    _, err = cli(["suite", str(suite), "--device", "cpu"], tmp_path).communicate(timeout=600)
    out, err = cli(["compare", "--method", "example-uniform", "--suite", str(suite), "--device", "cpu"],
                   tmp_path).communicate(timeout=600)
    assert "delta vs gaussian" in out, err
    row = next(line for line in out.splitlines() if SWIN in line).split()
    # model, precision, layout, weights, n_eval, example-uniform, seeds, gaussian, its seeds, delta
    assert row[1:3] == ["W8A8", "reference"] and row[4] == "300" and row[6] == row[8] == "1"
    assert float(row[9]) == pytest.approx(float(row[5]) - float(row[7]), abs=0.011)


def test_a_plugin_task_runs_end_to_end(tmp_path):
    """README "Adding a task": one class and its entry point; the CLI lists it, runs a method on it
    and stores its metric. The FP model agrees with itself on every image."""
    out, err = cli(["list"], tmp_path).communicate(timeout=120)
    assert "agreement" in out.split("tasks:")[1].splitlines()[0], err
    out, err = cli(["run", "--task", "agreement", "--model", SWIN, "--method", "gaussian", "--w-bits", "8",
                    "--a-bits", "8", "--n-eval", "200", "--device", "cpu"], tmp_path).communicate(timeout=600)
    [path] = (tmp_path / "results" / "cells" / "agreement").glob("*[0-9a-f].json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["metric"] == "agreement", err
    assert record["fp"]["agreement"] == 100.0 and 90 < record["quant"]["agreement"] <= 100
    assert record["quant"]["n_eval"] == 200


@pytest.mark.parametrize("task, model, n_eval", [
    ("classification", SWIN, 400),
    ("detection", "micro_mask-rcnn_swin_fmnist", 24),  # through mmengine's own launcher
    ("segmentation", "micro_upernet_deit_fmnist", 24),
])
def test_torchrun_with_two_gloo_ranks_stores_the_single_process_result(tmp_path, task, model, n_eval):
    args = ["--task", task, "--model", model, "--method", "gaussian", "--w-bits", "8", "--a-bits", "8",
            "--n-eval", str(n_eval), "--device", "cpu"]
    env = {**os.environ, "CLAMP_RESULTS": str(tmp_path / "dist"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "benchmarks",
                    "run", *args], cwd=ROOT, env=env, check=True, capture_output=True)
    env["CLAMP_RESULTS"] = str(tmp_path / "single")
    subprocess.run([sys.executable, "-m", "benchmarks", "run", *args], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    dist_rec, single_rec = (json.loads(next((tmp_path / d).glob("cells/*/*.json")).read_text())
                            for d in ("dist", "single"))
    assert dist_rec["status"] == "ok", dist_rec.get("error")
    assert dist_rec["quant"] == single_rec["quant"] and dist_rec["quant"]["n_eval"] == n_eval
