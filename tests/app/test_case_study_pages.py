"""The case studies in the app: the findings' `case_studies`, a page and a JSON twin per case
study, and `monosemantic case-studies` re-run on a real tiny run with the user's proxies (one
that raises, one that matches nothing) changing nothing else the run stored."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from appdb import SAE_RUN
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from app.main import create_app
from app.models import CaseStudyView, Findings
from app.settings import Settings
from monosemantic.cli import main
from trainer.store.schema import Base, CaseStudy, SchemaInfo, make_engine

REQUIRED = (
    "name",
    "feature",
    "specificity",
    "sensitivity",
    "best_neuron",
    "neuron_specificity",
    "neuron_sensitivity",
    "url",
)


def raising_proxy(text: str, context: Any) -> float:
    """A user's proxy that fails."""
    raise ZeroDivisionError("planted failure")


@pytest.fixture(scope="module")
def sae_run(real_client: TestClient) -> dict[str, Any]:
    return next(run for run in real_client.get("/api/runs").json()["runs"] if run["kind"] == "sae")


def _check_pages(client: TestClient, findings: Findings) -> dict[str, str]:
    """Every case study's page and twin agree; returns each page's HTML by name."""
    pages = {}
    for item in findings.case_studies:
        twin = client.get(item.api_url)
        page = client.get(item.url)
        assert twin.status_code == page.status_code == 200, item.name
        view = CaseStudyView.model_validate(twin.json())
        assert view.name == item.name and view.status == item.status
        assert f'<link rel="alternate" type="application/json" href="{item.api_url}">' in page.text
        if item.status == "ok":
            assert view.feature is not None and view.feature.index == item.feature
            assert view.feature.specificity == item.specificity
            assert 'id="chart-case-feature"' in page.text
            assert view.feature.url and f'href="{view.feature.url}"' in page.text
            assert client.get(view.feature.url).status_code == 200
            if view.neuron is not None and view.neuron.url:
                assert f'href="{view.neuron.url}"' in page.text
                assert client.get(view.neuron.url).status_code == 200
        else:
            assert view.message and view.feature is None and "chart-case" not in page.text
            assert 'id="case-message"' in page.text
        pages[item.name] = page.text
    return pages


def test_findings_list_case_studies_with_a_page_and_twin_each(
    real_client: TestClient, sae_run: dict[str, Any]
) -> None:
    twin = real_client.get(f"{sae_run['api_url']}/findings").json()
    findings = Findings.model_validate(twin)
    names = [item["name"] for item in twin["case_studies"]]
    assert names[:3] == ["arabic", "hebrew", "base64"]  # the built-in proxies, the paper's first
    for item in twin["case_studies"]:
        assert set(REQUIRED) <= set(item)
    finding = next(f for f in findings.findings if f.key == "case_studies")
    assert finding.status == "computed"
    page = real_client.get(f"{sae_run['url']}/findings").text
    for item in findings.case_studies:
        assert f'href="{item.url}"' in page
    _check_pages(real_client, findings)


def test_unknown_case_study_is_404(real_client: TestClient, sae_run: dict[str, Any]) -> None:
    twin = real_client.get(f"{sae_run['api_url']}/case-studies/klingon")
    page = real_client.get(f"{sae_run['url']}/case-studies/klingon")
    assert twin.status_code == page.status_code == 404
    assert "no case study 'klingon'" in twin.json()["detail"]
    assert "no case study" in page.text


def test_rerun_with_users_proxies_touches_nothing_else(
    real_run_db: str, sae_run: dict[str, Any], tmp_path: Path
) -> None:
    source = Path(real_run_db.removeprefix("sqlite:///"))
    copy = tmp_path / "copy.db"
    shutil.copy(source, copy)
    url = f"sqlite:///{copy}"
    engine = make_engine(url)

    def snapshot() -> dict[str, list[Any]]:
        with engine.connect() as conn:
            return {
                table.name: sorted(map(tuple, conn.execute(table.select()).all()), key=repr)
                for table in Base.metadata.sorted_tables
                if table.name != CaseStudy.__tablename__
            }

    def stored() -> dict[str, str]:
        with engine.connect() as conn:
            return dict(conn.execute(select(CaseStudy.name, CaseStudy.status)).all())  # type: ignore[arg-type]

    before, built_in = snapshot(), stored()
    argv = ["case-studies", "--db", url, "--run", sae_run["slug"], "--no-builtin"]
    argv += [
        "--proxy",
        "letter-e=e",
        "--proxy",
        "nothing=(?!x)x",
        "--proxy",
        "test_case_study_pages:raising_proxy",
    ]
    assert main(argv) == 0
    assert snapshot() == before
    assert stored() == {**built_in, "letter-e": "ok", "nothing": "no_match", "raising_proxy": "error"}
    engine.dispose()

    with TestClient(create_app(Settings(database_url=url))) as client:
        findings = Findings.model_validate(client.get(f"{sae_run['api_url']}/findings").json())
        by_name = {item.name: item for item in findings.case_studies}
        assert by_name["raising_proxy"].error == "ZeroDivisionError: planted failure"
        letter_e = by_name["letter-e"]
        assert letter_e.feature is not None and letter_e.best_neuron is not None
        assert 0 < letter_e.specificity <= 1 and 0 < letter_e.sensitivity <= 1  # type: ignore[operator]
        pages = _check_pages(client, findings)
        assert "matches none of the" in pages["nothing"]
        assert "raising_proxy" in pages["raising_proxy"] and "planted failure" in pages["raising_proxy"]
        findings_page = client.get(f"{sae_run['url']}/findings").text
        assert "the proxy raised: ZeroDivisionError: planted failure" in findings_page


def test_a_database_from_before_case_studies(writable_db: str) -> None:
    engine = make_engine(writable_db)
    with engine.begin() as conn:  # schema version 7: no case studies
        conn.execute(text("DROP TABLE case_studies"))
        conn.execute(update(SchemaInfo).values(version=7))
    engine.dispose()
    with TestClient(create_app(Settings(database_url=writable_db))) as client:
        findings = client.get(f"/api/runs/{SAE_RUN}/findings").json()
        assert findings["case_studies"] == []
        claim = next(f for f in findings["findings"] if f["key"] == "case_studies")
        assert claim["status"] == "not_computed"
        assert f"monosemantic case-studies --run {SAE_RUN}" in claim["how_to_compute"]
        assert client.get(f"/runs/{SAE_RUN}/findings").status_code == 200
        assert client.get(f"/api/runs/{SAE_RUN}/case-studies/arabic").status_code == 404
