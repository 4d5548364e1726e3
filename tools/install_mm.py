"""Install the OpenMMLab stack (mmcv with its CPU ops, mmengine, mmdet, mmseg) into a venv.

PyPI has only mmcv 2.1.0's source (mmdet 3.3.0 and mmseg 1.2.2 refuse mmcv >= 2.2), and it does
not build against torch 2.14 as shipped: its setup.py forces -std=c++17 where torch's headers
need C++20. So we build the wheel ourselves, once, into a wheel cache ($CLAMP_WHEELS, default
~/.cache/clamp-vit-bench/wheels) keyed by the torch version; later installs reuse it. The
build needs setuptools >= 77.0.3 and < 81 (it imports pkg_resources) and the wheel package;
without debug info it takes about 7 minutes on 2 cores (see CFLAGS below).

    python tools/install_mm.py [--python PATH] [--rebuild]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MMCV = "2.1.0"
BUILD_REQUIRES = ["setuptools>=77.0.3,<81", "wheel"]
# -g0 drops debug info (32 MB, 23 min -> 1.4 MB, 7 min); setuptools 80 replaces Python's
# default flags with CFLAGS, so the whole set is given.
CFLAGS = "-Wsign-compare -DNDEBUG -g0 -fwrapv -O3 -Wall"


def wheel_cache() -> Path:
    return Path(os.environ.get("CLAMP_WHEELS") or Path.home() / ".cache" / "clamp-vit-bench" / "wheels")


def _run(python: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], check=True, **kwargs)


def _pip(python: str, *args: str) -> None:
    _run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args)


def has_mmcv_ops(python: str) -> bool:
    code = f"import mmcv, mmcv.ops; assert mmcv.__version__ == {MMCV!r}"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def torch_tag(python: str) -> str:
    out = _run(python, "-c", "import torch; print(torch.__version__)", capture_output=True, text=True)
    return out.stdout.strip().replace("+", "_")


def build_mmcv(python: str, dest: Path) -> Path:
    """Build the mmcv wheel with CPU ops from its PyPI source; return the cached wheel."""
    with tempfile.TemporaryDirectory(prefix="mmcv-build-") as tmp:
        work = Path(tmp)
        _run(python, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation", "--no-binary", ":all:",
             f"mmcv=={MMCV}", "-d", str(work))
        (sdist,) = work.glob("mmcv-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        src = work / f"mmcv-{MMCV}"
        setup = src / "setup.py"
        setup.write_text(setup.read_text().replace("-std=c++17", "-std=c++20"))
        env = dict(os.environ, MMCV_WITH_OPS="1", FORCE_CUDA="0", MAX_JOBS=str(os.cpu_count() or 1),
                   CFLAGS=CFLAGS)
        print(f"install_mm: building mmcv {MMCV} with CPU ops (about 7 minutes on 2 cores)", flush=True)
        _run(python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
             "-w", str(work / "dist"), env=env)
        (built,) = (work / "dist").glob("mmcv-*.whl")
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / built.name
        shutil.copyfile(built, target.with_suffix(".part"))
        os.replace(target.with_suffix(".part"), target)  # atomic: never a half-written wheel
        return target


def install(python: str, rebuild: bool = False) -> None:
    if has_mmcv_ops(python) and not rebuild:
        return
    _pip(python, *BUILD_REQUIRES)
    dest = wheel_cache() / f"torch-{torch_tag(python)}"
    cached = sorted(dest.glob(f"mmcv-{MMCV}-*.whl"))
    wheel = cached[-1] if cached and not rebuild else build_mmcv(python, dest)
    _pip(python, "--force-reinstall", "--no-deps", str(wheel))
    _pip(python, str(wheel))  # its runtime dependencies (mmengine, opencv, ...) from the registry
    if not has_mmcv_ops(python):
        raise SystemExit(f"install_mm: mmcv from {wheel} does not import its ops; rerun with --rebuild")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the venv's python (default: this one)")
    parser.add_argument("--rebuild", action="store_true", help="ignore the wheel cache and build again")
    args = parser.parse_args()
    install(args.python, args.rebuild)


if __name__ == "__main__":
    main()
