"""The findings page and its JSON twin, the run page's density marks and the feature pages'
ablation underlines: on a real tiny run, and on a database from before them."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest
from appdb import SAE_RUN
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import inspect, select, text, update

from app.main import create_app
from app.models import Findings
from app.settings import Settings
from monosemantic.cli import build_parser, config_from_args
from trainer.config import to_dict
from trainer.store.schema import SCHEMA_VERSION, SchemaInfo, ensure_schema, make_engine

CLAIMS = [
    "reconstruction",
    "interpretability",
    "case_studies",
    "splitting",
    "universality",
    "density",
    "ablation",
]


@pytest.fixture(scope="module")
def runs(real_client: TestClient) -> dict[str, dict[str, Any]]:
    return {run["kind"]: run for run in real_client.get("/api/runs").json()["runs"]}


@pytest.mark.parametrize("kind", ["sae", "neurons"])
def test_findings_page_and_twin(real_client: TestClient, runs: dict[str, dict[str, Any]], kind: str) -> None:
    run = runs[kind]
    twin = real_client.get(f"{run['api_url']}/findings")
    page = real_client.get(f"{run['url']}/findings")
    assert twin.status_code == page.status_code == 200
    findings = Findings.model_validate(twin.json())
    assert [f.key for f in findings.findings] == CLAIMS
    # Either run's page compares the same pair: the model's features and its neurons.
    assert findings.feature_run is not None and findings.feature_run.slug == runs["sae"]["slug"]
    assert findings.neuron_run is not None and findings.neuron_run.slug == runs["neurons"]["slug"]
    by_key = {f.key: f for f in findings.findings}
    for key in ("reconstruction", "interpretability", "density", "ablation"):
        assert by_key[key].status == "computed", key
    # One dictionary size and one model: no links, and each claim says which command makes them.
    for key in ("splitting", "universality"):
        assert (
            by_key[key].status == "not_computed" and "Not computed for this run" in by_key[key].how_to_compute
        )
        assert all(fig.ours is None and fig.paper_text for fig in by_key[key].figures)
        command = by_key[key].how_to_compute.split("`")[1]  # type: ignore[union-attr]
        assert f'<code class="command">{escape(command)}</code>' in page.text
    assert page.text.count("not computed for this run</span>") == 2
    assert f'<link rel="alternate" type="application/json" href="{run["api_url"]}/findings">' in page.text
    for finding in findings.findings:
        assert f'<section id="{finding.key}" class="finding status-{finding.status}">' in page.text
        for fig in finding.figures:
            assert fig.paper_text in page.text.replace("&#39;", "'")
        for link in finding.links:
            assert real_client.get(link.url.split("#")[0]).status_code == 200, link.url


def test_density_shares_match_the_features(real_client: TestClient, runs: dict[str, dict[str, Any]]) -> None:
    density = next(
        f
        for f in real_client.get(f"{runs['sae']['api_url']}/findings").json()["findings"]
        if f["key"] == "density"
    )
    for unit, kind in (("features", "sae"), ("neurons", "neurons")):
        run = runs[kind]
        items = [
            item
            for page in range(1, run["n_features"] // 200 + 2)
            for item in real_client.get(run["api_url"], params={"size": 200, "page": page}).json()[
                "features"
            ]["items"]
        ]
        assert len(items) == run["n_features"]
        summary = density["details"][unit]
        dead = sum(item["density"] == 0 for item in items)
        assert summary["n_dead"] == dead and summary["dead_share"] == pytest.approx(dead / len(items))
        # The tiny run analyses 20,000 tokens: one firing is a density of 5e-5, above the cut.
        assert summary["min_density"] == pytest.approx(1 / run["n_tokens_analyzed"])
        assert summary["n_ultralow"] is None and summary["ultralow_share"] is None
    figures = {f["name"]: f for f in density["figures"]}
    assert figures["dead, features"]["paper_text"].startswith("4.1%")
    assert figures["ultralow (density < 1e-5), features"]["ours_text"].startswith("not measurable")


def test_run_page_marks_dead_and_the_measurable_floor(
    real_client: TestClient, runs: dict[str, dict[str, Any]]
) -> None:
    run = runs["sae"]
    page = real_client.get(run["url"]).text
    assert f'href="{run["url"]}/findings"' in page
    assert "The paper's A/1/4096: 4.1% dead, 7.1% ultralow." in page
    spec = re.search(r'<script type="application/json" id="chart-density">(.*?)</script>', page, re.S)
    assert spec and "1 / tokens analysed" in spec.group(1) and "dead (never fired)" in spec.group(1)
    summary = real_client.get(run["api_url"]).json()["density_summary"]
    assert (
        summary["n_units"] == run["n_features"] and summary["n_tokens_analyzed"] == run["n_tokens_analyzed"]
    )


@pytest.mark.parametrize("kind", ["sae", "neurons"])
def test_feature_pages_carry_ablation_effects(
    real_client: TestClient, runs: dict[str, dict[str, Any]], kind: str
) -> None:
    """Every top example has one effect per token: 0 exactly where the unit does not fire."""
    run = runs[kind]
    underlined = 0
    for index in range(0, run["n_features"], 7):
        feature = real_client.get(f"{run['api_url']}/features/{index}").json()
        for example in feature["top_examples"]:
            effects = example["effects"]
            assert effects is not None and len(effects) == len(example["tokens"])
            for effect, act in zip(effects, example["activations"], strict=True):
                if act <= 0:
                    assert effect == 0
        page = real_client.get(f"{run['url']}/features/{index}").text
        underlined += len(re.findall(r'class="a\d+(?: f)? u[br]\d" data-abl="[+-]', page))
    assert underlined > 0


def test_a_database_from_before_findings_is_served_without_them(writable_db: str) -> None:
    engine = make_engine(writable_db)
    with engine.begin() as conn:  # schema version 3: no effects, no run findings
        conn.execute(text("DROP TABLE example_effects"))
        conn.execute(text("DROP TABLE run_findings"))
        conn.execute(update(SchemaInfo).values(version=3))
    engine.dispose()
    with TestClient(create_app(Settings(database_url=writable_db))) as client:
        findings = client.get(f"/api/runs/{SAE_RUN}/findings")
        assert findings.status_code == 200
        ablation = next(f for f in findings.json()["findings"] if f["key"] == "ablation")
        assert ablation["status"] == "not_computed" and "predates" in ablation["how_to_compute"]
        assert client.get(f"/runs/{SAE_RUN}/findings").status_code == 200
        feature = client.get(f"/api/runs/{SAE_RUN}/features/5").json()
        assert all(example["effects"] is None for example in feature["top_examples"])
        page = client.get(f"/runs/{SAE_RUN}/features/5")
        assert page.status_code == 200 and "data-abl" not in page.text and "ablation-legend" not in page.text
        assert client.get(f"/runs/{SAE_RUN}").status_code == 200


def test_unknown_run_findings_is_404(client: TestClient) -> None:
    assert client.get("/runs/nope/findings").status_code == 404
    assert client.get("/api/runs/nope/findings").status_code == 404


def test_interpretability_finding_carries_the_views_medians(
    real_client: TestClient, runs: dict[str, dict[str, Any]]
) -> None:
    findings = real_client.get(f"{runs['neurons']['api_url']}/findings").json()["findings"]
    finding = next(f for f in findings if f["key"] == "interpretability")
    groups = real_client.get(f"{runs['sae']['api_url']}/interpretability").json()["groups"]
    local = {g["unit"]: g for g in groups if g["explainer"] == "local"}
    figures = {f["name"]: f for f in finding["figures"]}
    for unit in ("features", "neurons"):
        logit = figures[f"median logit score, {unit}"]
        low, high = local[unit]["ci"]["logit_score"]
        assert logit["ours"] == pytest.approx(local[unit]["median_logit_score"])
        assert logit["ours_text"] == f"{local[unit]['median_logit_score']:.3g} [{low:.2f}, {high:.2f}]"
        assert figures[f"median simulation score, every scoring token, {unit}"]["ours"] == pytest.approx(
            local[unit]["median_score"]
        )
        # The headline: top-and-random windows (Bills et al.), with its bootstrap interval.
        headline = figures[f"median top-and-random simulation score, {unit}"]
        assert headline["ours"] == pytest.approx(local[unit]["median_score_top_random"])
        low, high = finding["details"]["ci"][unit]["score_top_random"]
        assert low <= headline["ours"] <= high
        assert finding["details"][unit]["n_scored"] == local[unit]["n_scored"] > 0
    # The logit score's chance level is measured (a re-initialised model), not assumed.
    baseline = finding["details"]["baseline_logit_score"]
    assert baseline is not None and abs(baseline - 0.5) < 0.1
    assert finding["baseline_logit_score"] == baseline  # the API contract's top-level field
    assert finding["ci"] == finding["details"]["ci"]
    assert figures["logit score's chance level (measured: randomised model)"]["ours"] == pytest.approx(
        baseline
    )
    assert figures["median logit score, features"]["paper"] == 0.74
    assert figures["median logit score, neurons"]["paper"] == 0.53
    assert [link["url"] for link in finding["links"]] == [f"{runs['sae']['url']}/interpretability"]
    page = real_client.get(f"{runs['sae']['url']}/findings").text
    section = page[page.index('<section id="interpretability"') : page.index('<section id="splitting"')]
    assert f'<td class="num ours">{local["features"]["median_logit_score"]:.3g} [' in section


def test_the_commands_shown_rebuild_the_runs_config(
    real_client: TestClient, runs: dict[str, dict[str, Any]]
) -> None:
    """Each command of a not-computed claim parses, and describes this very run (same folder,
    database and settings), with the sizes or model B it adds."""
    findings = real_client.get(f"{runs['sae']['api_url']}/findings").json()["findings"]
    run = real_client.get(runs["sae"]["api_url"]).json()
    expected = json.loads(json.dumps(run["config"]))
    n = runs["sae"]["n_features"]
    seen = set()
    for key, added in (("splitting", {"sizes": [n, n // 2]}), ("universality", {"seed_b": 1})):
        how = next(f for f in findings if f["key"] == key)["how_to_compute"]
        for command in how.split("`")[1].split("; "):
            argv = shlex.split(command)
            assert argv[0] == "monosemantic" and "--resume" in argv
            args = build_parser().parse_args(argv[1:])
            config = json.loads(json.dumps(to_dict(config_from_args(args))))
            assert {k: v for k, v in config.items() if k != "study"} == {
                k: v for k, v in expected.items() if k != "study"
            }, command
            assert {k: config["study"][k] for k in added} == added
            seen.add(argv[1])
    assert seen == {"train-lm", "harvest", "train-sae", "evaluate", "analyze"}


def test_a_database_from_before_size_maps_is_served_and_migrated(writable_db: str) -> None:
    engine = make_engine(writable_db)
    with engine.begin() as conn:  # schema version 6: matches, but no maps of several sizes
        conn.execute(text("DROP TABLE size_map_points"))
        conn.execute(text("DROP TABLE size_maps"))
        conn.execute(update(SchemaInfo).values(version=6))
    with TestClient(create_app(Settings(database_url=writable_db))) as client:
        view = client.get(f"/api/runs/{SAE_RUN}/splitting")
        assert view.status_code == 200 and view.json()["size_map"] == []
        assert "not linked" in view.json()["message"]
        page = client.get(f"/runs/{SAE_RUN}/splitting")
        assert page.status_code == 200 and "chart-size-map" not in page.text
        splitting = next(
            f
            for f in client.get(f"/api/runs/{SAE_RUN}/findings").json()["findings"]
            if f["key"] == "splitting"
        )
        assert splitting["status"] == "not_computed" and "`monosemantic " in splitting["how_to_compute"]
    ensure_schema(engine)  # what the trainer does on its next write
    assert {"size_maps", "size_map_points"} <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.execute(select(SchemaInfo.version)).scalar_one() == SCHEMA_VERSION
    engine.dispose()
