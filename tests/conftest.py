"""Shared fixtures: a fixed seed for every test, and a throwaway PostgreSQL server."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pglocal import PostgresUnavailable, local_postgres


@pytest.fixture(autouse=True)
def seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A server URL without database name: DATABASE_URL_TEST's, or a throwaway local server."""
    if os.environ.get("DATABASE_URL_TEST"):
        yield os.environ["DATABASE_URL_TEST"]
        return
    root = Path(tempfile.mkdtemp(prefix="pgtest-"))
    try:
        with local_postgres(root) as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
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
