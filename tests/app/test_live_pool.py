"""The live pool seen from outside: processes pre-started with the worker (their models loaded
before any request) or started on first use, and /-/health showing the pool from the worker's
own counters, answering at once while every child is busy."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import livejobs
from appdb import SAE_RUN, FixtureDB
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.live import inference
from app.main import create_app
from app.settings import Settings

STEER = f"/api/runs/{SAE_RUN}/steer?text=the+cat&feature=2&tokens=4"


def _pool(client: TestClient) -> dict[str, Any]:
    answer = client.get("/-/health")
    assert answer.status_code == 200
    pool: dict[str, Any] = answer.json()["live"]
    return pool


def test_prestart_starts_the_process_and_loads_the_models_before_any_request(fixture_db: FixtureDB) -> None:
    settings = Settings(database_url=fixture_db.url, live_processes=1, live_prestart=True)
    with TestClient(create_app(settings)) as client:
        live = client.app.state.live  # type: ignore[attr-defined]
        assert livejobs.wait_for(lambda: _pool(client)["ready"] == 1), _pool(client)
        pid = live.children[0].pid
        assert pid is not None
        # The models were loaded by the pre-start job, not by this one (it only counts them).
        with Session(client.app.state.engine) as session:  # type: ignore[attr-defined]
            expected = len(inference.preload_sources(session))
        assert expected >= 2  # the fixture's 'sae' and 'neurons' runs
        assert client.portal.call(live.run, livejobs.kept_models) == expected  # type: ignore[union-attr]
        assert client.get(STEER).json()["pinned"]["tokens"]
        assert live.children[0].pid == pid  # the request used the pre-started process
        assert _pool(client) == {
            "processes": 1,
            "alive": 1,
            "ready": 1,
            "jobs_admitted": 0,
            "jobs_running": 0,
            "max_jobs": settings.live_max_jobs,
        }


def test_without_prestart_the_process_starts_on_first_use(fixture_db: FixtureDB) -> None:
    settings = Settings(database_url=fixture_db.url, live_processes=1, live_prestart=False)
    with TestClient(create_app(settings)) as client:
        time.sleep(0.5)  # time enough to see a pre-start begin, were there one
        assert _pool(client)["alive"] == 0 and _pool(client)["ready"] == 0
        assert client.get(STEER).json()["pinned"]["tokens"]
        assert _pool(client)["alive"] == 1 and _pool(client)["ready"] == 1
        live = client.app.state.live  # type: ignore[attr-defined]
        assert client.portal.call(live.run, livejobs.kept_models) == 1  # the steered run's only  # type: ignore[union-attr]


def test_health_shows_running_and_waiting_jobs_without_asking_the_busy_process(
    fixture_db: FixtureDB, tmp_path: Path
) -> None:
    """One process held by a job, a second job waiting for it: /-/health answers at once (no round
    trip to the process, which would wait for the job) with 2 admitted, 1 running."""
    settings = Settings(database_url=fixture_db.url, live_processes=1, live_max_jobs=3, live_prestart=False)
    with TestClient(create_app(settings)) as client:
        live = client.app.state.live  # type: ignore[attr-defined]
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir(), second.mkdir()
        jobs = [
            threading.Thread(target=client.portal.call, args=(live.run, livejobs.hold, str(flags)))  # type: ignore[union-attr]
            for flags in (first, second)
        ]
        try:
            jobs[0].start()
            assert livejobs.wait_for(lambda: (first / "started").exists()), "the first job never began"
            jobs[1].start()
            assert livejobs.wait_for(lambda: live.jobs == 2)
            began = time.monotonic()
            pool = _pool(client)
            assert time.monotonic() - began < 2
            assert (pool["alive"], pool["ready"], pool["jobs_admitted"], pool["jobs_running"]) == (1, 1, 2, 1)
            assert pool["max_jobs"] == 3 and not (second / "started").exists()
        finally:
            (first / "release").touch()
            (second / "release").touch()
            for job in jobs:
                job.join(60)
        pool = _pool(client)
        assert (pool["jobs_admitted"], pool["jobs_running"], pool["alive"]) == (0, 0, 1)
