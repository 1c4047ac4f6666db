"""Fixtures for the app tests: a real tiny run's database, the synthetic databases of appdb.py
(for edge cases a real run does not produce: XSS payloads, unfinished runs), in-process clients,
real servers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from appdb import FixtureDB, build_fixture_db, build_hostile_db, start_server
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

# The apps and servers of the tests start their live processes on first use: most never run a
# model, and a pre-start would spend a torch import on each (test_live_pool.py tests it).
os.environ.setdefault("MONOSEMANTIC_LIVE_PRESTART", "0")


@pytest.fixture(scope="session")
def real_run_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The database of the whole tiny chain (corpus → LM → SAE → analysis), run once (~30 s)."""
    from monosemantic.cli import main

    out_dir = tmp_path_factory.mktemp("real-run")
    url = f"sqlite:///{out_dir / 'monosemantic.db'}"
    argv = ["demo", "--preset", "tiny", "--no-serve", "--out-dir", str(out_dir), "--db", url]
    assert main(argv) == 0, "the tiny demo run failed (see its output above)"
    return url


@pytest.fixture(scope="session")
def real_client(real_run_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=real_run_db))) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def fixture_db(tmp_path_factory: pytest.TempPathFactory) -> FixtureDB:
    return build_fixture_db(tmp_path_factory.mktemp("app-db"))


@pytest.fixture(scope="session")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> FixtureDB:
    return build_hostile_db(tmp_path_factory.mktemp("hostile-db"))


@pytest.fixture
def writable_db(fixture_db: FixtureDB, tmp_path: Path) -> str:
    """A copy of the fixture database the test may write to (re-analyse runs, store pages)."""
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{fixture_db.path}{suffix}")
        if source.exists():
            shutil.copy(source, tmp_path / f"fixture.db{suffix}")
    return f"sqlite:///{tmp_path / 'fixture.db'}"


@pytest.fixture(scope="session")
def client(fixture_db: FixtureDB) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=fixture_db.url))) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def hostile_client(hostile_db: FixtureDB) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=hostile_db.url))) as test_client:
        yield test_client


@dataclass(frozen=True)
class Server:
    base_url: str
    db: FixtureDB


@pytest.fixture(scope="session")
def server(fixture_db: FixtureDB) -> Iterator[Server]:
    proc, base = start_server(fixture_db)
    yield Server(base_url=base, db=fixture_db)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def real_server(real_run_db: str) -> Iterator[Server]:
    """`monosemantic serve` on the real tiny run's database."""
    db = FixtureDB(url=real_run_db, path=Path(real_run_db.removeprefix("sqlite:///")), artifacts=None)
    proc, base = start_server(db)
    yield Server(base_url=base, db=db)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def hostile_server(hostile_db: FixtureDB) -> Iterator[Server]:
    proc, base = start_server(hostile_db)
    yield Server(base_url=base, db=hostile_db)
    proc.terminate()
    proc.wait(timeout=10)
