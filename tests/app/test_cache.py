"""The page cache of complete runs: hits, ETag revalidation, and never a stale page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from appdb import RUNNING_RUN, SAE_RUN
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.main import create_app
from app.pages.cache import CachedPage, PageLRU, code_version, page_version
from app.settings import Settings
from trainer.store.database import pending_run
from trainer.store.schema import Feature, make_engine

FEATURE = f"/runs/{SAE_RUN}/features/5"


@pytest.fixture
def fresh_client(writable_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=writable_db))) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "path", [FEATURE, f"/api{FEATURE}", f"/runs/{SAE_RUN}?sort=density", "/search?token=+the"]
)
def test_second_visit_is_a_hit_with_the_same_bytes(fresh_client: TestClient, path: str) -> None:
    first, second = fresh_client.get(path), fresh_client.get(path)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.content == second.content and first.headers["etag"] == second.headers["etag"]
    assert second.headers["cache-control"] == "public, no-cache"
    assert second.headers["content-security-policy"]  # security headers on cached pages too


def test_gzip_only_for_clients_that_accept_it(fresh_client: TestClient) -> None:
    zipped = fresh_client.get(FEATURE, headers={"accept-encoding": "gzip"})
    plain = fresh_client.get(FEATURE, headers={"accept-encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert zipped.content == plain.content  # httpx decodes the gzipped one
    assert int(plain.headers["content-length"]) == len(plain.content)


def test_matching_etag_gets_304(fresh_client: TestClient) -> None:
    etag = fresh_client.get(FEATURE).headers["etag"]
    revalidated = fresh_client.get(FEATURE, headers={"if-none-match": etag})
    assert revalidated.status_code == 304 and revalidated.content == b""
    assert revalidated.headers["etag"] == etag
    assert fresh_client.get(FEATURE, headers={"if-none-match": '"other"'}).status_code == 200


def test_reanalysed_run_under_the_same_slug_is_never_served_stale(
    fresh_client: TestClient, writable_db: str
) -> None:
    before = fresh_client.get(FEATURE)
    assert fresh_client.get(FEATURE).headers["x-cache"] == "hit"
    assert "re-analysed label" not in before.text

    # What `monosemantic analyze` does: a new run under a pending slug, swapped in when complete.
    engine = make_engine(writable_db)
    with pending_run(
        engine, SAE_RUN, kind="sae", model_name="tiny", variant="paper", d_in=16, n_features=8
    ) as run_id:
        with Session(engine) as session:
            session.add(
                Feature(
                    run_id=run_id,
                    index=5,
                    density=0.01,
                    max_activation=2.0,
                    mean_activation=1.0,
                    label="re-analysed label",
                )
            )
            session.commit()
    engine.dispose()

    after = fresh_client.get(FEATURE)
    assert after.status_code == 200 and after.headers["x-cache"] == "miss"
    assert "re-analysed label" in after.text and after.headers["etag"] != before.headers["etag"]
    assert fresh_client.get(f"/api{FEATURE}").json()["label"] == "re-analysed label"
    old_etag = fresh_client.get(FEATURE, headers={"if-none-match": before.headers["etag"]})
    assert old_etag.status_code == 200  # not 304: the browser's copy is of the old run
    assert fresh_client.get(f"/runs/{SAE_RUN}/features/6").status_code == 404  # the old run is gone


def test_unfinished_runs_inference_and_errors_are_not_cached(fresh_client: TestClient) -> None:
    for path in (
        f"/runs/{RUNNING_RUN}",
        "/",  # the front page shows the running run's progress
        f"/runs/{SAE_RUN}/inference?text=the",
        f"/runs/{SAE_RUN}/features/100000",
        "/-/health",
    ):
        fresh_client.get(path)
        response = fresh_client.get(path)
        assert "x-cache" not in response.headers and "etag" not in response.headers, path


def test_page_version_scopes() -> None:
    runs = [(1, "a", "complete", "t1"), (2, "b", "running", "None")]
    assert page_version("/runs/a/features/3", runs) == page_version("/api/runs/a", runs)
    assert page_version("/runs/a/features/3", runs) != page_version(
        "/runs/a/features/3", [(3, "a", "complete", "t2")]
    )
    assert page_version("/runs/b/features/3", runs) is None
    assert page_version("/runs/a/inference", runs) is None
    assert page_version("/runs/zzz", runs) is None
    assert page_version("/", runs) is None and page_version("/api/runs", runs[:1]) is not None
    # Search covers complete runs only: a running run coming and going does not change it.
    assert page_version("/search", runs) == page_version("/api/search", runs[:1])


def test_lru_stays_within_its_bytes() -> None:
    pages = PageLRU(max_bytes=1000)
    for i in range(10):
        pages.put(("v", str(i), b""), CachedPage([], b"x" * 300))
    assert pages.bytes <= 1000 and len(pages) == 3
    assert pages.get(("v", "9", b"")) is not None and pages.get(("v", "0", b"")) is None


def test_code_version_follows_code_templates_and_static_files(tmp_path: Path) -> None:
    for name in ("a.py", "b.html", "c.css", "d.js"):
        (tmp_path / name).write_text("one")
    before = code_version(tmp_path)
    for name in ("a.py", "b.html", "c.css", "d.js"):
        (tmp_path / name).write_text("two")
        after = code_version(tmp_path)
        assert after != before, name
        before = after
    (tmp_path / "notes.txt").write_text("not served")
    assert code_version(tmp_path) == before
