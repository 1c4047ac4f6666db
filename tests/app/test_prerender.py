"""Stored pages (`monosemantic prerender`): the same bytes as a live render, served from the
database, only by the code that rendered them, skipped when present, gone with their run."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator

import pytest
from appdb import N_NEURONS, N_SAE, NEURON_RUN, RUNNING_RUN, SAE_RUN
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from app.main import create_app
from app.pages.prerender import PrerenderError, prerender, run_page_paths, runs_without_pages
from app.settings import Settings
from monosemantic.cli import main
from trainer.store.database import pending_run
from trainer.store.schema import SCHEMA_VERSION, SchemaInfo, StoredPage, make_engine

FEATURE = f"/runs/{SAE_RUN}/features/5"
PAGES_PER_RUN = {SAE_RUN: 2 + 2 * N_SAE, NEURON_RUN: 2 + 2 * N_NEURONS}


def stored_count(db_url: str) -> int:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(StoredPage)).scalar_one()
    engine.dispose()
    return int(count)


@pytest.fixture
def stored_db(writable_db: str) -> str:
    result = prerender(writable_db, processes=1, progress=False)
    assert (result.runs, result.rendered, result.skipped) == (2, sum(PAGES_PER_RUN.values()), 0)
    return writable_db


def client_for(db_url: str, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(database_url=db_url, **settings)))  # type: ignore[arg-type]


@pytest.fixture
def stored_client(stored_db: str) -> Iterator[TestClient]:
    with client_for(stored_db) as test_client:
        yield test_client


def test_paths_of_a_run_are_its_page_and_every_feature_with_twins() -> None:
    paths = run_page_paths("a b", 3)
    assert paths[:2] == ["/runs/a%20b", "/api/runs/a%20b"]
    assert "/runs/a%20b/features/2" in paths and "/api/runs/a%20b/features/2" in paths
    assert len(paths) == len(set(paths)) == 2 + 2 * 3


@pytest.mark.parametrize(
    "path", [FEATURE, f"/api{FEATURE}", f"/runs/{SAE_RUN}", f"/runs/{NEURON_RUN}/features/3"]
)
def test_stored_page_is_the_live_page(stored_db: str, path: str) -> None:
    with client_for(stored_db) as stored, client_for(stored_db, stored_pages=False) as live:
        served, rendered = stored.get(path), live.get(path)
    assert served.status_code == rendered.status_code == 200
    assert (served.headers["x-cache"], rendered.headers["x-cache"]) == ("store", "miss")
    assert served.content == rendered.content
    assert served.headers["content-type"] == rendered.headers["content-type"]
    assert served.headers["etag"] == rendered.headers["etag"]
    assert served.headers["content-security-policy"]


def test_the_store_is_what_is_served(stored_db: str) -> None:
    """A stored body is sent as it is (so the store really is read), then kept in memory."""
    engine = make_engine(stored_db)
    with engine.begin() as conn:
        conn.execute(
            update(StoredPage)
            .where(StoredPage.path == FEATURE)
            .values(body_gzip=gzip.compress(b"<p>from the store</p>"))
        )
    engine.dispose()
    with client_for(stored_db) as client:
        first, second = client.get(FEATURE), client.get(FEATURE)
    assert first.text == second.text == "<p>from the store</p>"
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("store", "hit")


def test_pages_of_another_app_version_are_not_served(stored_db: str) -> None:
    engine = make_engine(stored_db)
    with engine.begin() as conn:
        conn.execute(update(StoredPage).values(app_version="an older app"))
    engine.dispose()
    with client_for(stored_db) as client:
        response = client.get(FEATURE)
    assert response.status_code == 200 and response.headers["x-cache"] == "miss"
    assert runs_without_pages(make_engine(stored_db)) == [NEURON_RUN, SAE_RUN]
    again = prerender(stored_db, processes=1, progress=False)
    assert again.rendered == sum(PAGES_PER_RUN.values())  # the old version's pages are replaced
    assert stored_count(stored_db) == sum(PAGES_PER_RUN.values())


def test_query_strings_and_other_routes_render_live(stored_client: TestClient) -> None:
    for path in (f"/runs/{SAE_RUN}?sort=density", "/search?token=+the"):
        assert stored_client.get(path).headers["x-cache"] == "miss", path


def test_a_second_prerender_skips_stored_pages_and_force_redoes_them(stored_db: str) -> None:
    again = prerender(stored_db, processes=1, progress=False)
    assert (again.rendered, again.skipped) == (0, sum(PAGES_PER_RUN.values()))
    forced = prerender(stored_db, slugs=[NEURON_RUN], processes=1, force=True, progress=False)
    assert (forced.runs, forced.rendered) == (1, PAGES_PER_RUN[NEURON_RUN])
    assert stored_count(stored_db) == sum(PAGES_PER_RUN.values())


def test_an_interrupted_prerender_continues(writable_db: str) -> None:
    prerender(writable_db, slugs=[NEURON_RUN], processes=1, progress=False)
    engine = make_engine(writable_db)
    with engine.begin() as conn:  # as if killed after some pages
        conn.execute(delete(StoredPage).where(StoredPage.path.like("%/features/1%")))
    engine.dispose()
    missing = PAGES_PER_RUN[NEURON_RUN] - stored_count(writable_db)
    assert missing > 0
    resumed = prerender(writable_db, processes=1, progress=False)
    assert resumed.rendered == missing + PAGES_PER_RUN[SAE_RUN]


def test_worker_processes_store_the_same_pages(writable_db: str, stored_db: str) -> None:
    """Two spawned rendering processes give the bytes one process gives."""
    parallel_db = writable_db.replace("fixture.db", "parallel.db")
    shutil.copy(writable_db.removeprefix("sqlite:///"), parallel_db.removeprefix("sqlite:///"))
    engine = make_engine(parallel_db)
    with engine.begin() as conn:
        conn.execute(delete(StoredPage))
    engine.dispose()
    result = prerender(parallel_db, slugs=[NEURON_RUN], processes=2, progress=False)
    assert result.rendered == PAGES_PER_RUN[NEURON_RUN]

    def pages(url: str) -> dict[str, bytes]:
        engine = make_engine(url)
        with engine.connect() as conn:
            rows = conn.execute(
                select(StoredPage.path, StoredPage.body_gzip).where(StoredPage.path.contains("neurons"))
            )
            found = {path: gzip.decompress(body) for path, body in rows}
        engine.dispose()
        return found

    assert pages(parallel_db) == pages(stored_db)


def test_replacing_a_run_drops_its_stored_pages(stored_db: str) -> None:
    engine = make_engine(stored_db)
    with pending_run(engine, SAE_RUN, kind="sae", model_name="tiny", variant="paper", d_in=16, n_features=8):
        pass
    engine.dispose()
    assert stored_count(stored_db) == PAGES_PER_RUN[NEURON_RUN]
    with client_for(stored_db) as client:
        assert client.get(f"/runs/{SAE_RUN}/features/5").status_code == 404  # the new run has no 5


def test_a_database_from_before_stored_pages_is_served_and_upgraded(writable_db: str) -> None:
    engine = make_engine(writable_db)
    with engine.begin() as conn:  # schema version 1: no stored_pages table
        conn.execute(text("DROP TABLE stored_pages"))
        conn.execute(update(SchemaInfo).values(version=1))
    with client_for(writable_db) as client:
        response = client.get(FEATURE)
        assert response.status_code == 200 and response.headers["x-cache"] == "miss"
    assert runs_without_pages(engine) == [NEURON_RUN, SAE_RUN]
    prerender(writable_db, slugs=[SAE_RUN], processes=1, progress=False)
    with Session(engine) as session:
        assert session.scalar(select(SchemaInfo.version)) == SCHEMA_VERSION
    engine.dispose()
    with client_for(writable_db) as client:
        assert client.get(FEATURE).headers["x-cache"] == "store"


def test_unknown_or_unfinished_runs_are_refused(writable_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PrerenderError, match="no run 'nope'"):
        prerender(writable_db, slugs=["nope"], progress=False)
    with pytest.raises(PrerenderError, match="not complete"):
        prerender(writable_db, slugs=[RUNNING_RUN], progress=False)
    assert main(["prerender", "--db", writable_db, "--run", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert stored_count(writable_db) == 0


def test_cli_prerender(writable_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prerender", "--db", writable_db, "--run", NEURON_RUN, "--processes", "1"]) == 0
    assert f"{PAGES_PER_RUN[NEURON_RUN]} pages of 1 run(s) stored" in capsys.readouterr().out
    assert main(["prerender", "--db", "sqlite:////nonexistent/x.db"]) == 2
    assert "no database at /nonexistent/x.db" in capsys.readouterr().err


def test_a_database_from_before_feature_maps_is_served_without_one(writable_db: str) -> None:
    engine = make_engine(writable_db)
    with engine.begin() as conn:  # schema version 2: no map columns
        conn.execute(text("ALTER TABLE features DROP COLUMN map_x"))
        conn.execute(text("ALTER TABLE features DROP COLUMN map_y"))
        conn.execute(update(SchemaInfo).values(version=2))
    engine.dispose()
    with client_for(writable_db) as client:
        detail = client.get(f"/api/runs/{SAE_RUN}")
        assert detail.status_code == 200 and detail.json()["feature_map"] == []
        assert client.get(f"/runs/{SAE_RUN}").status_code == 200
        assert client.get(FEATURE).status_code == 200
