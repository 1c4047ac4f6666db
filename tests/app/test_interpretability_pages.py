"""Interpretability scores in the app: on a real tiny run's pages, and absent from older databases."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from app.main import create_app
from app.settings import Settings


@pytest.fixture(scope="module")
def runs(real_client: TestClient) -> dict[str, dict[str, Any]]:
    return {run["kind"]: run for run in real_client.get("/api/runs").json()["runs"]}


@pytest.mark.parametrize("kind", ["sae", "neurons"])
def test_features_against_neurons_page_and_twin(
    real_client: TestClient, runs: dict[str, dict[str, Any]], kind: str
) -> None:
    run = runs[kind]
    data = real_client.get(f"{run['api_url']}/interpretability").json()
    assert data["available"] and data["message"] == ""
    units = {group["unit"]: group for group in data["groups"] if group["explainer"] == "local"}
    assert set(units) == {"features", "neurons"}  # this run and its model's other basis
    assert units["features"]["n_units"] == runs["sae"]["n_features"]
    assert units["neurons"]["n_units"] == runs["neurons"]["n_features"]
    for group in units.values():
        assert group["n_scored"] == len(group["scores"]) > 0
        assert all(-1 <= s <= 1 for s in group["scores"]) and all(0 <= s <= 1 for s in group["logit_scores"])
        assert group["median_score"] == pytest.approx(
            sorted(group["scores"])[len(group["scores"]) // 2], abs=0.05
        )
    assert data["paper"]["logit_autointerp_features"] == 0.74
    page = real_client.get(f"{run['url']}/interpretability")
    assert page.status_code == 200
    assert 'id="chart-interp-score"' in page.text and 'id="chart-interp-logit"' in page.text
    for group in units.values():
        assert f"{group['median_score']:.3g}" in page.text
    assert f'href="{run["url"]}/interpretability"' in real_client.get(run["url"]).text


def test_every_feature_page_shows_its_automatic_explanation(
    real_client: TestClient, runs: dict[str, dict[str, Any]]
) -> None:
    run = runs["sae"]
    for index in range(0, run["n_features"], 37):
        twin = real_client.get(f"{run['api_url']}/features/{index}").json()
        [local] = [i for i in twin["interpretations"] if i["explainer"] == "local"]
        page = real_client.get(f"{run['url']}/features/{index}").text
        assert "automatic explanation" in page
        assert str(escape(local["explanation"])) in page


def test_a_database_from_before_scores_is_served_without_them(fixture_db: Any, tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(fixture_db.path) as source, sqlite3.connect(path) as copy:
        source.backup(copy)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE interpretations")
        db.execute("UPDATE schema_info SET version = 3")
    with TestClient(create_app(Settings(database_url=f"sqlite:///{path}"))) as client:
        slug = client.get("/api/runs").json()["runs"][0]["slug"]
        data = client.get(f"/api/runs/{slug}/interpretability").json()
        assert not data["available"] and "predates" in data["message"]
        assert client.get(f"/runs/{slug}/interpretability").status_code == 200
        assert client.get(f"/api/runs/{slug}/features/0").json()["interpretations"] == []
        assert client.get(f"/runs/{slug}/features/0").status_code == 200


def test_explanations_are_escaped(fixture_db: Any, tmp_path: Path) -> None:
    path = tmp_path / "hostile.db"
    with sqlite3.connect(fixture_db.path) as source, sqlite3.connect(path) as copy:
        source.backup(copy)
    with sqlite3.connect(path) as db:
        run_id, slug = db.execute(
            "SELECT id, slug FROM runs WHERE status = 'complete' AND kind = 'sae'"
        ).fetchone()
        db.execute(
            "INSERT INTO interpretations (run_id, feature_index, explainer, explanation, rules, score)"
            " VALUES (?, 0, 'llm', ?, '{}', 0.5)",
            (run_id, "<script>alert(1)</script>"),
        )
    with TestClient(create_app(Settings(database_url=f"sqlite:///{path}"))) as client:
        page = client.get(f"/runs/{slug}/features/0").text
        assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        data = client.get(f"/api/runs/{slug}/interpretability").json()
        assert [g["explainer"] for g in data["groups"]] == ["llm"] and "no complete run" not in data[
            "message"
        ]
