"""Fan cells out through submitit: SLURM on a cluster, or submitit's local executor (tests)."""
from __future__ import annotations

from typing import Any

from clamp.io import cache_dir

EXECUTORS = ("none", "slurm", "submitit-local")


def make_executor(kind: str, *, partition: str | None = None, gpus: int = 1, timeout_min: int = 240,
                  cpus: int = 8) -> Any:
    """None runs cells in this process; otherwise a submitit executor whose jobs run one cell each."""
    if kind == "none":
        return None
    import submitit
    folder = cache_dir("submitit") / "%j"
    if kind == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=timeout_min)
        return executor
    if kind == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(timeout_min=timeout_min, gpus_per_node=gpus, cpus_per_task=cpus,
                                   slurm_partition=partition, name="clamp-bench")
        return executor
    raise ValueError(f"unknown executor {kind!r}: choose one of {', '.join(EXECUTORS)}")
