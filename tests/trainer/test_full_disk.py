"""A full disk during checkpointing: a clear error, nothing corrupt, and the same command
finishes the work once there is space. The disk is a real size-limited file system
(a tmpfs mounted for the test; the tests run as root, as CI does)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import load_training_state
from trainer.sae import train_sae

sys.path.insert(0, str(Path(__file__).parent / "sae"))
from saedata import sae_cfg, superposition  # noqa: E402


class SmallDisk:
    """A tmpfs of a given size at `path`, resizable (`mount -o remount,size=`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mount(self, size: int) -> None:
        self._mount(["-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)])

    def resize(self, size: int) -> None:
        self._mount(["-o", f"remount,size={size}", str(self.path)])

    def _mount(self, args: list[str]) -> None:
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"the full-disk tests need `mount` (root): {result.stderr.strip()}", pytrace=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk")
    disk.path.mkdir()
    yield disk
    subprocess.run(["umount", "-l", str(disk.path)], capture_output=True)


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    data = tmp_path / "acts.npy"
    np.save(data, superposition(8_000)[0])
    cfg = sae_cfg(n_tokens=256 * 30, checkpoint_interval=10)
    reference = train_sae(cfg, data, tmp_path / "reference", progress=False)
    checkpoint_size = (tmp_path / "reference" / "checkpoint.pt").stat().st_size
    # Room for one checkpoint and a little more, not for the second one beside it.
    small_disk.mount(checkpoint_size + checkpoint_size // 2)
    out = small_disk.path / "sae"
    with pytest.raises(OSError, match="no space left to write .*checkpoint.pt") as raised:
        train_sae(cfg, data, out, progress=False)
    message = str(raised.value)
    assert "\n" not in message and "previous version is kept" in message and "--resume" in message
    assert load_training_state(out / "checkpoint.pt")["step"] == 10  # intact
    assert [p.name for p in out.iterdir()] == ["checkpoint.pt"]  # no half-written temporary file

    small_disk.resize(8 * checkpoint_size)
    resumed = train_sae(cfg, data, out, resume=True, progress=False)
    for name, tensor in reference.sae.state_dict().items():
        assert torch.equal(tensor, resumed.sae.state_dict()[name]), name
