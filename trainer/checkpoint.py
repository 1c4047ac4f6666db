"""Atomic writes and resumable training state.

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed
over the target, so a kill -9 leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import glob
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
    _remove_orphans(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp_name)
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        full = _out_of_space(exc, path.parent)  # before the unlink frees the space again
        Path(tmp_name).unlink(missing_ok=True)
        if full:
            raise OSError(
                errno.ENOSPC,
                f"no space left to write {path}; its previous version is kept: free some space "
                "and run the same command with --resume",
            ) from exc
        raise


def _out_of_space(exc: BaseException, directory: Path) -> bool:
    """Whether a failed write ran out of disk: ENOSPC and kin, or (torch.save reports a full disk
    as a RuntimeError of its zip writer) any write error with almost nothing left free."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize < 1 << 20


def _remove_orphans(path: Path) -> None:
    """Delete the temporary files of earlier writes of `path` whose process is gone (killed
    mid-write: kill -9 leaves no chance to clean up), so repeated kills do not fill the disk."""
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = orphan.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            orphan.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


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
