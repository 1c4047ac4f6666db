"""The app on the database of a real tiny run: every page of every run, search and inference."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from app.models import FeatureDetail
from app.pages.templating import effect_scale, shade, underline_attributes
from app.queries.runs import visible


@pytest.fixture(scope="module")
def runs(real_client: TestClient) -> dict[str, dict[str, Any]]:
    """The run summaries by kind ('sae' and 'neurons')."""
    body = real_client.get("/api/runs").json()
    assert body["unfinished"] == []
    by_kind = {run["kind"]: run for run in body["runs"]}
    assert set(by_kind) == {"sae", "neurons"}
    return by_kind


def test_front_page_links_both_runs(real_client: TestClient, runs: dict[str, dict[str, Any]]) -> None:
    response = real_client.get("/")
    assert response.status_code == 200
    for run in runs.values():
        assert f'href="{run["url"]}"' in response.text


@pytest.mark.parametrize("kind", ["sae", "neurons"])
def test_run_page_and_its_twin(real_client: TestClient, runs: dict[str, dict[str, Any]], kind: str) -> None:
    run = runs[kind]
    page, twin = real_client.get(run["url"]), real_client.get(run["api_url"])
    assert page.status_code == twin.status_code == 200
    detail = twin.json()
    assert detail["features"]["total"] == run["n_features"] and detail["config"]
    for item in detail["features"]["items"]:
        assert f'href="{item["url"]}"' in page.text


@pytest.mark.parametrize("kind", ["sae", "neurons"])
def test_run_page_has_its_feature_map(
    real_client: TestClient, runs: dict[str, dict[str, Any]], kind: str
) -> None:
    """Every feature (or neuron) has a place on the map, drawn on the run page with a link to it."""
    run = runs[kind]
    points = real_client.get(run["api_url"]).json()["feature_map"]
    assert [p["index"] for p in points] == list(range(run["n_features"]))
    assert len({(p["x"], p["y"]) for p in points}) > run["n_features"] // 2  # spread out, not one spot
    page = real_client.get(run["url"]).text
    spec = re.search(r'<script type="application/json" id="chart-map">(.*?)</script>', page, re.S)
    assert spec, "the map's chart data block"
    assert f'"link": "{run["url"]}/features/{{index}}"' in spec.group(1)


@pytest.mark.parametrize("kind", ["sae", "neurons"])
def test_every_feature_page(real_client: TestClient, runs: dict[str, dict[str, Any]], kind: str) -> None:
    """HTML and JSON of every feature: 200, the label shown escaped, one token span per token."""
    run = runs[kind]
    for index in range(run["n_features"]):
        page = real_client.get(f"{run['url']}/features/{index}")
        twin = real_client.get(f"{run['api_url']}/features/{index}")
        assert page.status_code == twin.status_code == 200, index
        feature = twin.json()
        assert feature["index"] == index and feature["unit"] == ("Neuron" if kind == "neurons" else "Feature")
        if feature["label"]:
            assert str(escape(visible(feature["label"]))) in page.text, index
        examples = feature["top_examples"] + [
            ex for band in feature["interval_bands"] for ex in band["examples"]
        ]
        detail = FeatureDetail.model_validate(feature)  # the twin keeps its documented model
        for example in examples:
            assert len(example["tokens"]) == len(example["token_ids"]) == len(example["activations"])
            assert_strip(page.text, example, feature["max_activation"], effect_scale(detail))
        assert page.text.count('<span class="toks">') == len(examples), index


def assert_strip(html: str, example: dict[str, Any], scale: float, underline_scale: float) -> None:
    """The example's row holds one span per token, in order: the token's escaped display text; if
    it fires, its shading class, its ablation underline and effect, its activation (for the
    tooltip) and tabindex; f on the focus."""
    row = re.search(
        rf'<div class="example" id="example-{example["id"]}">.*?'
        r'<span class="toks">((?:<span[^>]*>[^<]*</span>)*)</span></div>',
        html,
    )
    assert row, example["id"]
    spans = re.findall(r"<span([^>]*)>([^<]*)</span>", row.group(1))
    assert [text for _, text in spans] == [str(escape(t)) for t in example["tokens"]]
    effects = example["effects"] or [None] * len(spans)
    for i, ((attributes, _), act) in enumerate(zip(spans, example["activations"], strict=True)):
        focus = " f" if i == example["focus_position"] else ""
        if act > 0:
            underline, effect = underline_attributes(effects[i], underline_scale)
            expected = (
                f' class="a{shade(act, scale)}{focus}{underline}"{effect} data-act="{act:.3g}" tabindex="0"'
            )
        else:  # a negative activation (a GELU neuron's) is shown, not shaded
            expected = (' class="f"' if focus else "") + (f' data-act="{act:.3g}"' if act else "")
        assert attributes == expected, (example["id"], i, act)


def test_search_a_token_of_the_vocabulary(real_client: TestClient, runs: dict[str, dict[str, Any]]) -> None:
    result = real_client.get("/api/search", params={"token": " the"}).json()
    assert {m["token"]["text"] for m in result["matches"]} == {" the"}
    assert result["hits"], "no feature fires on ' the' in the tiny run"
    n_features = {run["slug"]: run["n_features"] for run in runs.values()}
    page = real_client.get("/search", params={"token": " the"})
    assert page.status_code == 200
    for hit in result["hits"][:20]:
        assert 0 <= hit["feature_index"] < n_features[hit["run"]]
        assert f'href="{hit["url"]}"' in page.text
        assert real_client.get(hit["url"]).status_code == 200


def test_inference_with_the_real_sae(real_client: TestClient, runs: dict[str, dict[str, Any]]) -> None:
    run = runs["sae"]
    text = "the cat sat on the mat"
    result = real_client.get(f"{run['api_url']}/inference", params={"text": text}).json()
    assert result["available"] and result["tokens"], result["message"]
    assert "".join(t["token"]["text"] for t in result["tokens"]) == text
    assert result["feature"] is not None and 0 <= result["feature"] < run["n_features"]
    page = real_client.get(f"{run['url']}/inference", params={"text": text})
    assert page.status_code == 200 and f">{text}</textarea>" in page.text
