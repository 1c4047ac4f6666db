"""Shared fixtures: a fixed seed for every test, and a throwaway PostgreSQL server."""

from __future__ import annotations

import glob
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres_user(command: list[str]) -> list[str]:
    # initdb and pg_ctl refuse to run as root.
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *command]
    return ["su", "postgres", "-c", " ".join(command)]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A server URL without database name: DATABASE_URL_TEST's, or a throwaway local server."""
    if os.environ.get("DATABASE_URL_TEST"):
        yield os.environ["DATABASE_URL_TEST"]
        return
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not binaries:
        pytest.fail(
            "PostgreSQL tests need DATABASE_URL_TEST or the postgresql server binaries "
            "(/usr/lib/postgresql/*/bin/pg_ctl): install postgresql",
            pytrace=False,
        )
    bin_dir = Path(binaries[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="pgtest-"))
    data = root / "data"
    port = _free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        root.chmod(0o700)

    def run(*command: str) -> None:
        result = subprocess.run(_as_postgres_user(list(command)), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            pytest.fail(
                f"could not start a throwaway PostgreSQL ({' '.join(command[:2])}): "
                f"{result.stderr or result.stdout}",
                pytrace=False,
            )

    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def _create_database(server_url: str) -> str:
    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    plain = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
    base, _, _ = plain.rpartition("/") if plain.count("/") > 2 else (plain, "", "")
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            break
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"cannot reach PostgreSQL at {base}: {exc}", pytrace=False)
            time.sleep(0.2)
    return f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> str:
    """A PostgreSQL database for the session, as a SQLAlchemy URL (postgresql+psycopg://...)."""
    return _create_database(postgres_server)


@pytest.fixture(scope="session")
def new_postgres_database(postgres_server: str) -> Callable[[], str]:
    """A maker of fresh, empty PostgreSQL databases on the session's server."""
    return lambda: _create_database(postgres_server)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return _create_database(request.getfixturevalue("postgres_server"))
