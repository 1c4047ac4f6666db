"""Atomic writes and resumable training state.

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed
over the target, so a kill -9 leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import pickle  # nosec B403  # only for its UnpicklingError; loading goes through torch's restricted unpickler
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back (corrupt, truncated, or of another run)."""


def _atomic_replace(path: Path, write: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp_name)
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_replace(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_replace(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    _atomic_replace(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_replace(path, lambda tmp: torch.save(obj, tmp))


def load_training_state(path: Path) -> dict[str, Any]:
    """Read a `torch.save`d training state, turning every way it can be broken into CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # weights_only: tensors and plain data (dict, list, tuple, str, numbers) only, which is all
        # a training state holds; a pickle naming any other global (a crafted file that would run
        # code on load) is refused by torch's restricted unpickler before anything runs.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain data (it names "
                f"{refused.group(1)}); refused, since loading it could run code: delete it unless "
                "you wrote it yourself with trusted code"
            ) from exc
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated (not a pickle of tensors and plain data); "
            "delete it to start over"
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {_first_line(exc)}); "
            "delete it to start over"
        ) from exc
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a training state written by this tool")
    return state


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
