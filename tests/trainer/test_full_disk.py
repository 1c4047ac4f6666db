"""A full disk during checkpointing and during analysis (SQLite and PostgreSQL): a clear error,
nothing corrupt, and the same command finishes the work once there is space. The disk is a real
size-limited file system (a tmpfs mounted for the test; the tests run as root, as CI does)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import load_training_state
from trainer.sae import train_sae
from trainer.store.database import complete_runs, open_database
from trainer.store.schema import make_engine

sys.path.insert(0, str(Path(__file__).parent / "sae"))
sys.path.insert(0, str(Path(__file__).parent))
from pglocal import PostgresUnavailable, local_postgres  # noqa: E402
from saedata import sae_cfg, superposition  # noqa: E402
from test_store import runs, store  # noqa: E402


class SmallDisk:
    """A tmpfs of a given size at `path`, resizable (`mount -o remount,size=`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mount(self, size: int, options: str = "") -> None:
        self._mount(["-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(self.path)])

    def used(self) -> int:
        """Bytes in use on it."""
        stats = os.statvfs(self.path)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

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


def _integrity(url: str) -> str:
    engine = make_engine(url)
    with engine.connect() as conn:
        verdict = str(conn.exec_driver_sql("PRAGMA integrity_check").scalar_one())
    engine.dispose()
    return verdict


def test_a_full_disk_while_analysis_writes_keeps_the_database_whole(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    """The SQLite database on a disk with room for one run but not two: re-analysing the run fails
    with a one-line error, the database passes integrity_check and still shows the old run (the
    half-written one not as complete); with more room the same call replaces the old run."""
    small_disk.mount(64 << 20)
    url = f"sqlite:///{small_disk.path / 'monosemantic.db'}"
    old_id = store(url, tmp_path)
    db_size = (small_disk.path / "monosemantic.db").stat().st_size  # the WAL is gone once closed
    small_disk.resize(db_size + db_size // 2)

    with pytest.raises(OSError, match="no space left to write run 'tiny-paper'") as raised:
        store(url, tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "free some space" in message, message
    assert _integrity(url) == "ok"
    assert complete_runs(open_database(url)) == [(old_id, "tiny-paper")]
    assert [status for _slug, status in runs(url)] == ["complete", "failed"]

    small_disk.resize(6 * db_size)
    new_id = store(url, tmp_path)
    assert _integrity(url) == "ok"
    assert complete_runs(open_database(url)) == [(new_id, "tiny-paper")] and new_id != old_id
    assert runs(url) == [("tiny-paper", "complete")]  # the failed attempt's leftovers are gone


@pytest.fixture
def postgres_on_small_disk() -> Iterator[tuple[SmallDisk, str]]:
    """A throwaway PostgreSQL server (files on the ordinary disk) and a small disk its user owns,
    both where that user can reach them (pytest's tmp_path is root's alone); yields the disk and
    the server's URL without a database name."""
    root = Path(tempfile.mkdtemp(prefix="pg-small-disk-"))
    root.chmod(0o755)
    disk = SmallDisk(root / "disk")
    disk.path.mkdir()
    (root / "server").mkdir()
    postgres = pwd.getpwnam("postgres")
    disk.mount(64 << 20, f",uid={postgres.pw_uid},gid={postgres.pw_gid},mode=0700")
    try:
        with local_postgres(root / "server") as base:
            yield disk, base
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        subprocess.run(["umount", "-l", str(disk.path)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.postgres
def test_a_full_disk_under_postgres_keeps_the_old_run(
    tmp_path: Path, postgres_on_small_disk: tuple[SmallDisk, str]
) -> None:
    """A PostgreSQL database in a tablespace on a small disk, the server's own files (its WAL)
    elsewhere: re-analysing the run fails with the same one-line error (the server says disk_full,
    SQLSTATE 53100, for the transaction, and stays up), the old run stays complete and the failed
    attempt is not; the same call then replaces the old run. (A full disk under the WAL
    itself stops the whole server, PANIC: that is the server's to survive, not the writer's.)"""
    import psycopg

    disk, base = postgres_on_small_disk
    plain = base.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE small LOCATION '{disk.path}'")
        conn.execute("CREATE DATABASE analysis TABLESPACE small")
    url = f"{base}/analysis"
    old_id = store(url, tmp_path)
    disk.resize(disk.used() + (256 << 10))  # room for the bookkeeping, not for the run

    with pytest.raises(OSError, match="no space left to write run 'tiny-paper'") as raised:
        store(url, tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "free some space" in message, message
    # Read once there is room: a new connection writes a cache file into the database's folder
    # (PostgreSQL's relcache init file), so a full one can refuse connections, readers' too.
    disk.resize(64 << 20)
    assert complete_runs(open_database(url)) == [(old_id, "tiny-paper")]
    # Marking the attempt failed needs a little room (a new row version); without it the attempt
    # is deleted. Never left 'running'.
    assert [status for _slug, status in runs(url)] in (["complete", "failed"], ["complete"])

    new_id = store(url, tmp_path)
    assert complete_runs(open_database(url)) == [(new_id, "tiny-paper")] and new_id != old_id
    assert "failed" not in [status for _slug, status in runs(url)]  # its leftovers are gone


def test_an_attempt_that_cannot_be_marked_failed_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When even the short 'failed' mark finds no room (PostgreSQL: a new row version and index
    entries, while deleted rows free nothing before a VACUUM), the attempt's rows are deleted:
    the old run stays the only one, the error is the one-line OSError, nothing stays 'running'."""
    from sqlalchemy.exc import OperationalError

    import trainer.store.database as store_module

    url = f"sqlite:///{tmp_path / 'monosemantic.db'}"
    old_id = store(url, tmp_path)

    class DiskFull(Exception):
        sqlstate = "53100"  # PostgreSQL's disk_full

    def disk_full_error() -> OperationalError:
        return OperationalError("UPDATE runs ...", {}, DiskFull("could not extend file"))

    def no_room(*_args: object) -> None:
        raise disk_full_error()

    monkeypatch.setattr(store_module, "mark_failed", no_room)
    engine = open_database(url)
    with pytest.raises(OSError, match="no space left to write run 'tiny-paper'"):
        with store_module.pending_run(
            engine, "tiny-paper", kind="sae", model_name="m", variant="topk", d_in=64, n_features=8
        ):
            raise disk_full_error()  # the write that found the disk full
    engine.dispose()
    assert runs(url) == [("tiny-paper", "complete")]
    assert complete_runs(open_database(url)) == [(old_id, "tiny-paper")]
