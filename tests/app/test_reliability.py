"""The app under load and hostile input: bounded live work (503 + Retry-After), no database
connection held while a model runs, an event loop that keeps answering while the pool is taken,
and the HTTP contract (HEAD, Allow, relative redirects, static files, 500 page, timestamps)."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import livejobs
import pytest
from appdb import NEURON_RUN, SAE_RUN, FixtureDB
from fastapi import APIRouter
from fastapi.testclient import TestClient

from app.live.pool import LiveProcess
from app.main import create_app
from app.security import CONTENT_SECURITY_POLICY
from app.settings import Settings

STEER = f"/api/runs/{SAE_RUN}/steer?text=the+cat&feature=2&tokens=4"


@pytest.fixture
def tight_client(fixture_db: FixtureDB) -> Iterator[TestClient]:
    """An app with one live slot, one database connection and a short wait for it."""
    settings = Settings(
        database_url=fixture_db.url,
        live_processes=1,
        live_max_jobs=1,
        db_pool_size=1,
        db_pool_timeout=3.0,
        live_prestart=False,  # its tests count the process's jobs from the first
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


# ----------------------------------------------------------------------------- bounded live work


def test_a_live_request_beyond_the_limit_is_refused_at_once(tight_client: TestClient, tmp_path: Path) -> None:
    """Limit 1: while one job runs, a second live request gets 503 with Retry-After at once."""
    live = tight_client.app.state.live  # type: ignore[attr-defined]
    answers: list[int] = []

    def hold_the_slot() -> None:
        answers.append(tight_client.portal.call(live.run, livejobs.hold, str(tmp_path)))  # type: ignore[union-attr]

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    try:
        deadline = time.monotonic() + 60  # the first job starts the model process
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (tmp_path / "started").exists() and live.jobs == 1
        began = time.monotonic()
        busy = tight_client.get(STEER)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        assert "busy" in busy.json()["detail"] and time.monotonic() - began < 5
        page = tight_client.get(f"/runs/{NEURON_RUN}/inference?text=the+cat")
        assert page.status_code == 503 and "Busy" in page.text
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        # Stored data still answers: the slot limits model work only.
        assert tight_client.get(f"/api/runs/{SAE_RUN}/features/2").status_code == 200
    finally:
        (tmp_path / "release").touch()
        holder.join(10)
    assert live.jobs == 0 and answers == [live.children[0].pid] and answers[0] != os.getpid()
    assert tight_client.get(STEER).status_code == 200


def test_no_database_connection_is_held_while_the_model_runs(
    tight_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tight_client.app.state.engine  # type: ignore[attr-defined]
    held: list[int] = []
    real_call = LiveProcess.call

    def watched_call(self: LiveProcess, function: Any, args: Any) -> Any:
        held.append(engine.pool.checkedout())  # the model runs in the child until `call` returns
        return real_call(self, function, args)

    monkeypatch.setattr(LiveProcess, "call", watched_call)
    body = tight_client.get(STEER).json()
    assert body["pinned"]["tokens"] and held == [0]


def test_the_event_loop_answers_while_every_connection_is_taken(tight_client: TestClient) -> None:
    """The pool's one connection taken: a page waits in a thread (then 503), /-/health answers."""
    engine = tight_client.app.state.engine  # type: ignore[attr-defined]
    answers: dict[str, Any] = {}

    def fetch() -> None:
        answers["runs"] = tight_client.get("/api/runs")

    with engine.connect():
        waiting = threading.Thread(target=fetch)
        waiting.start()
        time.sleep(0.2)  # the page's thread is now waiting for the connection
        assert tight_client.get("/-/health").status_code == 200
        assert waiting.is_alive()  # answered while the page still waits: the loop was free
        waiting.join(10)
    assert answers["runs"].status_code == 503 and answers["runs"].headers["retry-after"]
    assert tight_client.get("/api/runs").status_code == 200


# ----------------------------------------------------------------------------- HTTP contract


@pytest.mark.parametrize(
    "path", ["/", f"/runs/{SAE_RUN}", f"/api/runs/{SAE_RUN}/features/1", "/search?token=the", "/-/health"]
)
def test_head_is_answered_like_get_without_a_body(client: TestClient, path: str) -> None:
    get, head = client.get(path), client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("path", ["/", f"/runs/{SAE_RUN}", "/api/runs", "/-/health"])
def test_405_says_which_methods_are_allowed(client: TestClient, path: str) -> None:
    response = client.post(path)
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"


def test_trailing_slash_redirect_ignores_the_host_header(client: TestClient) -> None:
    response = client.get(
        f"/runs/{SAE_RUN}/?page=2", headers={"host": "evil.example"}, follow_redirects=False
    )
    assert response.status_code == 308 and response.headers["location"] == f"/runs/{SAE_RUN}?page=2"
    assert client.get("/nowhere/", follow_redirects=False).status_code == 404


def test_static_vendor_serves_only_the_plotly_bundle(client: TestClient) -> None:
    assert client.get("/static/vendor/plotly.min.js").status_code == 200
    for path in ("datasets/iris.csv.gz", "widgetbundle.js", "../__init__.py"):
        assert client.get(f"/static/vendor/{path}").status_code == 404


def test_a_500_is_the_apps_error_page_with_security_headers(fixture_db: FixtureDB) -> None:
    app = create_app(Settings(database_url=fixture_db.url))
    broken = APIRouter()

    @broken.get("/broken")
    @broken.get("/api/broken")
    def fail() -> None:
        raise RuntimeError("a bug with a secret inside")

    app.include_router(broken)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        page = test_client.get("/broken")
        api = test_client.get("/api/broken")
    assert page.status_code == 500 and "Something went wrong" in page.text and "secret" not in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert api.status_code == 500 and "secret" not in api.text and api.json()["detail"]
    assert api.headers["x-frame-options"] == "DENY"


def test_timestamps_carry_their_timezone(client: TestClient) -> None:
    runs = client.get("/api/runs").json()
    stamps = [r["created_at"] for group in runs.values() if isinstance(group, list) for r in group]
    assert stamps and all(re.search(r"(Z|[+-]00:00)$", s) for s in stamps if s)


@pytest.mark.parametrize(
    "query", ["text=the+cat&feature=", "text=the+cat&feature=2&value=", "feature=2", "text=&feature=2"]
)
def test_empty_or_missing_api_parameters_are_422(client: TestClient, query: str) -> None:
    assert client.get(f"/api/runs/{SAE_RUN}/steer?{query}").status_code == 422


def test_a_long_inference_text_is_in_the_page_a_few_times_only(client: TestClient) -> None:
    text = "zebra " + "the cat sat on the mat " * 86  # 1,984 characters
    page = client.get(f"/runs/{NEURON_RUN}/inference", params={"text": text})
    assert page.status_code == 200 and len(page.content) < 100_000
    # The form's box, the "show this feature" form, the steer link and the two JSON-twin links
    # (<head> and the page's "JSON" link); not once per token and feature.
    assert page.text.count("zebra") <= 5
