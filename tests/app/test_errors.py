"""Bad or huge parameters get a 4xx with a message (never a 500); missing things get a 404 page."""

from __future__ import annotations

import pytest
from appdb import SAE_RUN
from fastapi.testclient import TestClient

BAD = [
    (f"/runs/{SAE_RUN}/features/-1", "index"),
    (f"/runs/{SAE_RUN}/features/abc", "index"),
    (f"/runs/{SAE_RUN}/features/99999999999999999999", "index"),
    (f"/runs/{SAE_RUN}?size=100000", "size"),
    (f"/runs/{SAE_RUN}?page=0", "page"),
    (f"/runs/{SAE_RUN}?page=x", "page"),
    (f"/runs/{SAE_RUN}?sort=password", "sort"),
    (f"/runs/{SAE_RUN}?sort=index;drop table runs", "sort"),
    (f"/runs/{SAE_RUN}?order=sideways", "order"),
    (f"/runs/{SAE_RUN}?density_min=2", "density_min"),
    (f"/runs/{SAE_RUN}?density_min=nan", "density_min"),
    ("/search?token=" + "x" * 101, "token"),
    ("/search?token=the&mode=fuzzy", "mode"),
    ("/search?token=the&limit=100000", "limit"),
    (f"/runs/{SAE_RUN}/inference?text=" + "a" * 2001, "text"),
    (f"/runs/{SAE_RUN}/inference?feature=-3", "feature"),
    ("/runs/" + "r" * 300, "run"),
]


@pytest.mark.parametrize(("path", "param"), BAD)
def test_bad_params_are_422_in_html_and_json(client: TestClient, path: str, param: str) -> None:
    html = client.get(path)
    assert html.status_code == 422, html.text
    assert "Bad request" in html.text and param in html.text
    api = client.get("/api" + path)
    assert api.status_code == 422
    assert any(param in [str(p) for p in error["loc"]] for error in api.json()["detail"])


MISSING = [
    ("/runs/no-such-run", "no run 'no-such-run'"),
    (f"/runs/{SAE_RUN}/features/999", "has no feature 999"),
    ("/runs/no-such-run/features/1", "no run 'no-such-run'"),
    ("/runs/no-such-run/inference?text=hi", "no run 'no-such-run'"),
    (f"/runs/{SAE_RUN}/inference?text=hi&feature=999", "no feature 999"),
    ("/search?token=the&run=no-such-run", "no run 'no-such-run'"),
]


@pytest.mark.parametrize(("path", "message"), MISSING)
def test_missing_things_are_404_with_what_was_asked(client: TestClient, path: str, message: str) -> None:
    html = client.get(path)
    assert html.status_code == 404 and "text/html" in html.headers["content-type"]
    assert message in html.text.replace("&#39;", "'")
    assert 'href="/' in html.text and "back to" in html.text
    api = client.get("/api" + path)
    assert api.status_code == 404 and message in api.json()["detail"]


def test_missing_feature_links_back_to_its_run(client: TestClient) -> None:
    html = client.get(f"/runs/{SAE_RUN}/features/999").text
    assert f'<a href="/runs/{SAE_RUN}">← back to the run</a>' in html


def test_unknown_path_is_a_404_page(client: TestClient) -> None:
    response = client.get("/no/such/page")
    assert response.status_code == 404 and "There is no page here." in response.text
    assert client.get("/api/no/such").json() == {"detail": "Not Found"}


def test_write_is_impossible(client: TestClient) -> None:
    assert client.post(f"/api/runs/{SAE_RUN}").status_code == 405


def test_database_from_the_future_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from app.main import create_app
    from app.settings import Settings
    from trainer.store.schema import DatabaseError, SchemaInfo, ensure_schema, make_engine

    url = f"sqlite:///{tmp_path / 'future.db'}"
    engine = make_engine(url)
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(update(SchemaInfo).values(version=999))
    engine.dispose()
    with pytest.raises(DatabaseError, match="newer"), TestClient(create_app(Settings(database_url=url))):
        pass


def test_missing_database_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.main import create_app
    from app.settings import Settings
    from trainer.store.schema import DatabaseError

    url = f"sqlite:///{tmp_path / 'absent.db'}"
    with (
        pytest.raises(DatabaseError, match="cannot open database"),
        TestClient(create_app(Settings(database_url=url))),
    ):
        pass
