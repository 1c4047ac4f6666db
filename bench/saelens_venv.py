"""SAELens's own virtualenv, shared by the benches that run SAELens's code.

SAELens pins other versions of many packages than ours, so it lives in a venv of its own; torch is
pinned first (a looser range pulls a multi-GB CUDA build on a CPU machine).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEFAULT_VENV = Path("/tmp/saelens-venv")


def ensure_venv(venv: Path, install: bool) -> Path | None:
    """The venv's python once `import sae_lens` works there, creating the venv with
    `pip install torch==2.13.0 sae-lens` when `install`; None when SAELens cannot be had."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import sae_lens"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    if not install:
        print(f"SAELens is not installed in {venv} and --no-install was given: skipping it")
        return None
    print(f"creating {venv} and installing torch==2.13.0 sae-lens (a few minutes)...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "torch==2.13.0", "sae-lens"], check=True, timeout=900
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"could not install SAELens with pip ({exc}); skipping the SAELens comparison")
        return None
    return python


def saelens_version(python: Path) -> str:
    """The sae-lens version installed in the venv of `python`."""
    return subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('sae-lens'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
