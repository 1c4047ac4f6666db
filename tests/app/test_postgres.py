"""The browser on PostgreSQL (DATABASE_URL=postgresql+psycopg://...): pages, search and stored
pages, against a real server started by the test setup (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from appdb import NEURON_RUN, SAE_RUN, FixtureDB, build_fixture_db
from fastapi.testclient import TestClient

from app.main import create_app
from app.pages.prerender import prerender
from app.settings import Settings

pytestmark = pytest.mark.postgres

FEATURE = f"/runs/{SAE_RUN}/features/5"


@pytest.fixture(scope="module")
def postgres_fixture(
    new_postgres_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> FixtureDB:
    return build_fixture_db(tmp_path_factory.mktemp("pg-fixture"), new_postgres_database())


@pytest.fixture(scope="module")
def pg_client(postgres_fixture: FixtureDB) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=postgres_fixture.url))) as client:
        yield client


BUILD_SPECIFIC = {"created_at", "completed_at", "artifacts_path", "sae_path"}  # differ per build


def comparable(value: Any) -> Any:
    """`value` without the fields that differ between two builds of the same fixture."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in BUILD_SPECIFIC}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def test_pages_and_search_on_postgres(
    pg_client: TestClient, postgres_fixture: FixtureDB, client: TestClient
) -> None:
    """The same answers as from the SQLite copy of the same fixture."""
    for path in (f"/api/runs/{SAE_RUN}", f"/api{FEATURE}", f"/api/runs/{NEURON_RUN}/features/3"):
        on_postgres, on_sqlite = pg_client.get(path), client.get(path)
        assert on_postgres.status_code == 200, path
        assert comparable(on_postgres.json()) == comparable(on_sqlite.json()), path
    for params in ({"token": " the"}, {"token": "t", "mode": "prefix"}):
        found = pg_client.get("/api/search", params=params).json()
        assert found["hits"] and found == client.get("/api/search", params=params).json()
    assert pg_client.get(FEATURE).status_code == 200


def test_prerender_into_postgres_and_serve_the_stored_page(
    postgres_fixture: FixtureDB, tmp_path: Path
) -> None:
    result = prerender(postgres_fixture.url, slugs=[SAE_RUN], processes=1, progress=False)
    assert result.rendered > 0
    with (
        TestClient(create_app(Settings(database_url=postgres_fixture.url))) as stored,
        TestClient(create_app(Settings(database_url=postgres_fixture.url, stored_pages=False))) as live,
    ):
        served, rendered = stored.get(FEATURE), live.get(FEATURE)
    assert (served.headers["x-cache"], rendered.headers["x-cache"]) == ("store", "miss")
    assert served.content == rendered.content
