"""A real tiny study (two dictionary sizes on model A, model B from another seed) through the
command line, then its family and universality views in-process and in a real browser."""

from __future__ import annotations

import math
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from appdb import start_server
from fastapi.testclient import TestClient
from markupsafe import escape
from playwright.sync_api import expect, sync_playwright
from sqlalchemy.orm import Session

from app.main import create_app
from app.settings import Settings
from monosemantic.cli import main
from trainer.store.schema import Run, Token, make_engine

SMALL, LARGE, RUN_B = "tiny-paper-64", "tiny-paper-128", "tiny-paper-64-b"
YARDSTICK = "tiny-paper-64-seed2"  # a second SAE of the main size on model A, SAE seed 2
STAGES = ["corpus", "train-lm", "harvest", "train-sae", "evaluate", "analyze"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Each stage as its own command, as a user would run them (no prerender)."""
    out_dir = tmp_path_factory.mktemp("study") / "tinystudy"
    url = f"sqlite:///{out_dir.parent / 'study.db'}"
    common = [
        "--preset",
        "tiny",
        "--out-dir",
        str(out_dir),
        "--db",
        url,
        "--d-sae",
        "64,128",
        "--seed-b",
        "1",
        "--yardstick-seed",
        "2",
    ]
    # Smaller than the tiny preset: this test is about the links, not the models.
    shorter = {
        "train-lm": ["--lm-steps", "20"],
        "harvest": ["--harvest-tokens", "16384"],
        "train-sae": ["--sae-tokens", "16384"],
        "evaluate": ["--eval-tokens", "2048"],
        "analyze": ["--analysis-tokens", "4096"],
    }
    for stage in STAGES:
        assert main([stage, *common, *shorter.get(stage, [])]) == 0, f"{stage} failed (see its output above)"
    return SimpleNamespace(url=url, path=out_dir.parent / "study.db", out_dir=out_dir)


@pytest.fixture(scope="module")
def client(study: SimpleNamespace) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=study.url))) as test_client:
        yield test_client


def test_the_study_wrote_every_run(client: TestClient, study: SimpleNamespace) -> None:
    slugs = {run["slug"] for run in client.get("/api/runs").json()["runs"]}
    assert slugs == {SMALL, LARGE, RUN_B, YARDSTICK, "tinystudy-neurons", "tinystudy-b-neurons"}
    assert (study.out_dir / "sae_paper_64_seed2").is_dir()
    assert (study.out_dir / "sae_paper_128").is_dir() and (study.out_dir / "tinystudy-b" / "lm").is_dir()
    assert (study.out_dir / "tinystudy-b" / "tokens").resolve() == (study.out_dir / "tokens").resolve()


def test_feature_page_shows_its_matches_in_both_directions(client: TestClient) -> None:
    twin = client.get(f"/api/runs/{SMALL}/features/0").json()
    sizes, seeds = twin["matches"]["sizes"], twin["matches"]["seeds"]
    assert [group["run"]["slug"] for group in sizes] == [LARGE]
    assert [group["run"]["slug"] for group in seeds] == [RUN_B]
    correlations = [m["activation_correlation"] for m in sizes[0]["matches"]]
    assert len(correlations) == 3 and correlations == sorted(correlations, reverse=True)
    assert all(-1 <= m["decoder_cosine"] <= 1 for m in sizes[0]["matches"])
    assert seeds[0]["matches"][0]["decoder_cosine"] is None  # two models: no shared decoder space
    page = client.get(f"/runs/{SMALL}/features/0").text
    assert f'class="b-match" href="{seeds[0]["matches"][0]["url"]}"' in page
    assert f'href="{twin["matches"]["family_url"]}"' in page
    # B's page links back to A's dictionary.
    back = client.get(f"/api/runs/{RUN_B}/features/{seeds[0]['matches'][0]['index']}").json()
    assert back["matches"]["seeds"][0]["run"]["slug"] == SMALL


def test_family_tree_is_consistent_with_the_matches(client: TestClient) -> None:
    """Root in the small dictionary; every child's best match in the small one is its parent."""
    tree = client.get(f"/api/runs/{LARGE}/features/5/family").json()
    assert [level["slug"] for level in tree["levels"]] == [SMALL, LARGE]
    nodes = {node["id"]: node for node in tree["nodes"]}
    root = nodes[0]
    assert root["parent"] is None and root["run"] == SMALL and root["on_path"]
    best_small = client.get(f"/api/runs/{LARGE}/features/5").json()["matches"]["sizes"][0]["matches"][0]
    assert root["index"] == best_small["index"]
    path = [n for n in nodes.values() if n["on_path"] and n["run"] == LARGE]
    assert [n["index"] for n in path] == [5]
    for node in nodes.values():
        if node["parent"] is None:
            continue
        parent = nodes[node["parent"]]
        child = client.get(f"/api/runs/{node['run']}/features/{node['index']}").json()
        assert child["matches"]["sizes"][0]["matches"][0]["index"] == parent["index"]
        assert node["on_path"] or node["correlation"] >= tree["threshold"]
    page = client.get(f"/runs/{LARGE}/features/5/family")
    assert page.status_code == 200 and 'id="chart-family"' in page.text
    for node in nodes.values():
        assert f'class="family-member" href="{node["url"]}"' in page.text


def test_universality_histograms_for_features_and_neurons(client: TestClient) -> None:
    view = client.get(f"/api/runs/{SMALL}/universality").json()
    assert view["message"] is None and view["paper_median_features"] == 0.72
    [features], [neurons] = view["features"], view["neurons"]
    assert (features["run"]["slug"], features["other"]["slug"]) == (SMALL, RUN_B)
    assert neurons["other"]["slug"] == "tinystudy-b-neurons" and neurons["n"] == 128
    assert sum(features["counts"]) == features["n"] == 64 and -1 <= features["median"] <= 1
    page = client.get(f"/runs/{SMALL}/universality")
    assert page.status_code == 200 and 'id="chart-universality"' in page.text
    summary = page.text[page.text.index('id="finding-universality"') :]
    assert f"features <strong>{features['median']:.3g}" in summary and "(paper 0.72)" in summary


def test_universality_controls_yardstick_alive_and_density_medians(client: TestClient) -> None:
    """Issue 21: the seed-only yardstick, medians over alive units and by density floor, each with
    a bootstrap interval, in the view and in the findings' API entry."""
    view = client.get(f"/api/runs/{SMALL}/universality").json()
    [features] = view["features"]
    summary = features["summary"]
    assert summary["overall"]["median"] == pytest.approx(features["median"])
    low, high = summary["overall"]["ci"]
    assert low <= features["median"] <= high
    assert summary["alive"]["n"] <= 64 and set(summary["by_density"]) == {"1e-05", "0.0001", "0.001"}
    yardsticks = {(h["run"]["slug"], h["other"]["slug"]) for h in view["yardstick"]}
    assert (SMALL, YARDSTICK) in yardsticks
    entry = {f["key"]: f for f in client.get(f"/api/runs/{SMALL}/findings").json()["findings"]}[
        "universality"
    ]
    details = entry["details"]
    yardstick = next(h for h in view["yardstick"] if h["run"]["slug"] == SMALL)
    assert details["yardstick_median"] == pytest.approx(yardstick["median"])
    assert details["median_by_density"]["features"] == {
        k: v["median"] for k, v in summary["by_density"].items()
    }
    assert details["ci"]["features"] == summary["overall"]["ci"]
    # The API contract: the same figures at the entry's top level.
    assert entry["yardstick_median"] == details["yardstick_median"]
    assert entry["median_by_density"] == details["median_by_density"]["features"]
    assert entry["ci"] == details["ci"]
    page = client.get(f"/runs/{SMALL}/universality").text
    assert "yardstick" in page and f'href="/runs/{YARDSTICK}"' in page


def _children_in_large(path: Path) -> Counter[int]:
    """Per feature of the small dictionary, its children in the large one, straight from the tables."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT m.other_index FROM feature_matches m JOIN run_links l ON l.id = m.link_id "
            "JOIN runs a ON a.id = l.run_id JOIN runs b ON b.id = l.other_run_id "
            "WHERE a.slug = ? AND b.slug = ? AND m.rank = 0 AND m.activation_correlation >= 0.4",
            (LARGE, SMALL),
        ).fetchall()
    return Counter(index for (index,) in rows)


def test_findings_show_the_studys_numbers_beside_the_papers(
    client: TestClient, study: SimpleNamespace
) -> None:
    twin = client.get(f"/api/runs/{SMALL}/findings").json()
    by_key = {f["key"]: f for f in twin["findings"]}
    assert all(f["status"] == "computed" for f in by_key.values()), [
        f["key"] for f in by_key.values() if f["status"] != "computed"
    ]
    children = _children_in_large(study.path)
    splitting = {f["name"]: f for f in by_key["splitting"]["figures"]}
    parents = splitting["64 → 128: features with a child in the larger dictionary"]
    assert parents["ours"] == pytest.approx(len(children) / 64) and parents["paper_text"] == "not stated"
    assert splitting["64 → 128: features that split into two or more"]["ours_text"] == (
        f"{sum(n >= 2 for n in children.values())} of 64"
    )
    assert splitting["link threshold (activation correlation)"]["paper"] == 0.4
    [pair] = by_key["splitting"]["details"]["pairs"]
    assert pair["n_linked"] == sum(children.values())
    universality = client.get(f"/api/runs/{SMALL}/universality").json()
    figures = {f["name"]: f for f in by_key["universality"]["figures"]}
    for unit, paper in (("features", 0.72), ("neurons", 0.46)):
        assert figures[f"median best-match correlation, {unit}"]["ours"] == universality[unit][0]["median"]
        assert figures[f"median best-match correlation, {unit}"]["paper"] == paper
    page = client.get(f"/runs/{SMALL}/findings").text
    assert "not computed for this run" not in page
    for key in ("interpretability", "splitting", "universality"):
        section = page[page.index(f'<section id="{key}"') :]
        section = section[: section.index("</section>")]
        for fig in by_key[key]["figures"]:
            assert f'<td class="num ours">{escape(fig["ours_text"])}</td>' in section, fig
        for link in by_key[key]["links"]:
            assert f'href="{escape(link["url"])}"' in section
            assert client.get(link["url"]).status_code == 200, link["url"]


def test_splitting_view_and_its_map_of_every_size(client: TestClient, study: SimpleNamespace) -> None:
    view = client.get(f"/api/runs/{SMALL}/splitting").json()
    assert view["message"] is None and [level["slug"] for level in view["levels"]] == [SMALL, LARGE]
    [pair] = view["pairs"]
    children = _children_in_large(study.path)
    assert pair["n_parents"] == len(children) and pair["n_split"] == sum(n >= 2 for n in children.values())
    assert [(f["index"], f["n_children"]) for f in pair["largest_families"]] == sorted(
        children.items(), key=lambda item: (-item[1], item[0])
    )[:5]
    points = view["size_map"]
    assert sorted((p["run"], p["index"]) for p in points) == sorted(
        [(SMALL, i) for i in range(64)] + [(LARGE, i) for i in range(128)]
    )
    assert {p["n_features"] for p in points} == {64, 128}
    assert all(math.isfinite(p["x"]) and math.isfinite(p["y"]) for p in points)
    assert len({(p["x"], p["y"]) for p in points}) > 100  # placed, not piled up
    # One map for both: the larger run's view shows the same points.
    assert client.get(f"/api/runs/{LARGE}/splitting").json()["size_map"] == points
    page = client.get(f"/runs/{SMALL}/splitting").text
    assert (
        'id="chart-size-map"' in page
        and f'<link rel="alternate" type="application/json" href="/api/runs/{SMALL}/splitting">' in page
    )
    for family in pair["largest_families"]:
        assert f'class="family-link" href="{family["url"]}"' in page
    neurons = client.get("/api/runs/tinystudy-neurons/splitting").json()
    assert "holds neurons" in neurons["message"] and neurons["size_map"] == []


def _add_run(path: Path, slug: str, d_in: int, vocabulary: list[bytes]) -> None:
    engine = make_engine(f"sqlite:///{path}")
    with Session(engine) as session:
        run = Run(
            slug=slug,
            kind="sae",
            status="complete",
            model_name=slug,
            variant="paper",
            d_in=d_in,
            n_features=4,
        )
        session.add(run)
        session.flush()
        session.add_all(
            Token(run_id=run.id, token_id=i, raw=raw, text=raw.decode(), display=raw.decode())
            for i, raw in enumerate(vocabulary)
        )
        session.commit()
    engine.dispose()


@pytest.fixture(scope="module")
def foreign_db(study: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The study's database plus a run of another width and one with another tokenizer."""
    path = tmp_path_factory.mktemp("foreign") / "study.db"
    shutil.copy(study.path, path)
    engine = make_engine(f"sqlite:///{path}")
    with Session(engine) as session:
        run = session.query(Run).filter_by(slug=SMALL).one()
        d_in = run.d_in
    engine.dispose()
    _add_run(path, "wider", d_in * 2, [b"a"])
    _add_run(path, "other-tokenizer", d_in, [b"x", b"y"])
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    ("other", "reason"), [("wider", "different widths"), ("other-tokenizer", "different tokenizers")]
)
def test_runs_of_other_tokenizer_or_width_are_never_matched(
    foreign_db: str, other: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with TestClient(create_app(Settings(database_url=foreign_db))) as test_client:
        page = test_client.get(f"/runs/{SMALL}/universality", params={"other": other})
        twin = test_client.get(f"/api/runs/{SMALL}/universality", params={"other": other}).json()
    assert page.status_code == 200 and reason in page.text
    assert reason in twin["message"] and twin["features"] == twin["neurons"] == []
    assert main(["match", "--db", foreign_db, "--run", SMALL, "--run", other]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and reason in error and len(error.splitlines()) == 1


def test_match_command_rematches_two_runs(study: SimpleNamespace, tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    shutil.copy(study.path, path)
    url = f"sqlite:///{path}"
    assert main(["match", "--db", url, "--run", SMALL, "--run", LARGE, "--tokens", "2048"]) == 0
    with TestClient(create_app(Settings(database_url=url))) as test_client:
        group = test_client.get(f"/api/runs/{SMALL}/features/0").json()["matches"]["sizes"][0]
    assert group["n_tokens"] == 2048  # replaced, not duplicated
    with sqlite3.connect(path) as db:  # and the map of both sizes drawn again, replacing the old
        assert db.execute("SELECT count(*) FROM size_maps").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM size_map_points").fetchone() == (64 + 128,)
    assert main(["match", "--db", url, "--run", SMALL, "--run", "missing"]) == 2


@pytest.mark.browser
def test_family_view_and_b_match_link_in_a_browser(study: SimpleNamespace, client: TestClient) -> None:
    b_match = client.get(f"/api/runs/{SMALL}/features/0").json()["matches"]["seeds"][0]["matches"][0]
    proc, base = start_server(SimpleNamespace(url=study.url), workers=1)  # type: ignore[arg-type]
    errors: list[Any] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base}/runs/{SMALL}/features/0")
            page.locator("a.b-match").click()
            expect(page).to_have_url(f"{base}{b_match['url']}")
            expect(page.locator("h1")).to_have_text(f"Feature {b_match['index']}")
            page.goto(f"{base}/runs/{LARGE}/features/5")
            page.get_by_role("link", name="Family tree").click()
            expect(page).to_have_url(f"{base}/runs/{LARGE}/features/5/family")
            expect(
                page.locator("[data-chart=chart-family].js-plotly-plot svg.main-svg").first
            ).to_be_visible()
            assert page.locator("[data-chart=chart-family] .scatterlayer .point").count() >= 2
            page.locator("a.family-member").first.click()
            expect(page.locator("h1")).to_have_text(
                f"Feature {client.get(f'/api/runs/{LARGE}/features/5/family').json()['nodes'][0]['index']}"
            )
            # The findings page links to each view; the splitting view draws every size on one map.
            page.goto(f"{base}/runs/{SMALL}/findings")
            page.locator("#splitting").get_by_role("link", name="feature splitting across").click()
            expect(page).to_have_url(f"{base}/runs/{SMALL}/splitting")
            expect(
                page.locator("[data-chart=chart-size-map].js-plotly-plot svg.main-svg").first
            ).to_be_visible()
            page.go_back()
            page.locator("#universality").get_by_role("link", name="best-match histograms").click()
            expect(page).to_have_url(f"{base}/runs/{SMALL}/universality")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert errors == []
