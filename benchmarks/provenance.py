"""Where a number came from: library versions, project commit, the code that computed it, device."""
from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import re
import subprocess
from functools import cache
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CODE = ("clamp", "baselines", "tasks")  # the packages that compute a cell's numbers


def git(*args: str, check: bool = False) -> str:
    """What ``git ARGS`` prints in this checkout (``check``: a failing command raises)."""
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


@cache
def commit() -> str:
    """The project's git commit, with '+dirty' when tracked files other than results/ (which the
    harness itself rewrites) have uncommitted changes."""
    sha = git("rev-parse", "--short=12", "HEAD")
    if not sha:
        return "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results") else "")


@cache
def code_fingerprint(rev: str = "HEAD") -> str | None:
    """A hash of the git trees of clamp/, baselines/ and tasks/ at ``rev``: equal fingerprints,
    equal code. None when ``rev`` is unknown here (or this is no git checkout)."""
    trees = git("rev-parse", *(f"{rev}:{path}" for path in CODE)).split()
    if len(trees) != len(CODE):
        return None
    return hashlib.sha256(" ".join(trees).encode()).hexdigest()[:12]


def committed_code_tree() -> str | None:
    """The code fingerprint when clamp/, baselines/ and tasks/ have no uncommitted changes (the
    rest of the checkout may), else None: what today's behaviour fingerprints are filed under."""
    return None if git("status", "--porcelain", "--untracked-files=no", "--", *CODE) else code_fingerprint()


def committed_code() -> str | None:
    """This checkout's code fingerprint, or None when its tracked files have uncommitted changes
    (their numbers are '+dirty': never rows, never cached)."""
    return None if commit().endswith("+dirty") else code_fingerprint()


def record_fingerprint(record: dict) -> str | None:
    """The code fingerprint a record was computed with: stored, or derived from its commit."""
    if record.get("code"):
        return record["code"]
    match = re.search(r"commit=([0-9a-f]+)(\+dirty)?$", record.get("versions", ""))
    return code_fingerprint(match[1]) if match and not match[2] else None


def is_dirty(record: dict) -> bool:
    return "+dirty" in record.get("versions", "")


def versions() -> str:
    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "-"
    libs = ("torch", "timm", "mmengine", "mmcv", "mmdet", "mmsegmentation")
    return " ".join(f"{lib}={version(lib)}" for lib in libs) + f" commit={commit()}"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@cache
def machine() -> str:
    """What decides a float computation's last bits besides the code: CPU architecture, its model,
    the kernels torch dispatches to on it (AVX2, AVX512, ...) and torch's version. Canary
    signatures are compared only between runs on one machine (benchmarks/fingerprint.py)."""
    capability = torch.backends.cpu.get_cpu_capability()
    digest = hashlib.sha256(f"{cpu_model()}|{capability}|{torch.__version__}".encode()).hexdigest()[:8]
    return f"{platform.machine()}-{capability.lower()}-{digest}"


def machine_description() -> str:
    return f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()} kernels, torch {torch.__version__}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()}"
