"""Export → import round trips lose nothing a page shows (compared through the JSON API), bad run
files are refused with the target database untouched, and the Neuronpedia layout holds the run."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from appdb import SAE_RUN, FixtureDB
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.main import create_app
from app.settings import Settings
from monosemantic.cli import main
from trainer.store.database import complete_runs
from trainer.store.neuronpedia import export_neuronpedia
from trainer.store.runfile import RunFileError, export_jsonl, import_jsonl
from trainer.store.schema import (
    CaseStudy,
    ExampleEffect,
    FeatureMatch,
    Interpretation,
    RunFinding,
    RunLink,
    make_engine,
)


def _same_instant(value: Any) -> Any:
    """Times as the instant they name: SQLite gives them back without a zone, PostgreSQL in UTC."""
    if isinstance(value, dict):
        return {
            k: v.removesuffix("Z").removesuffix("+00:00")
            if k.endswith("_at") and isinstance(v, str)
            else _same_instant(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_same_instant(v) for v in value]
    return value


def _answer(client: TestClient, path: str) -> Any:
    response = client.get(path)
    return response.status_code, response.json()


def pages(url: str, max_features: int = 10_000) -> dict[str, Any]:
    """Every JSON page of every complete run: the run list, run pages, feature pages and their
    families (of at most `max_features` features a run, evenly spaced), findings, case studies,
    interpretability, universality, searches."""
    seen: dict[str, Any] = {}
    with TestClient(create_app(Settings(database_url=url))) as client:
        runs = client.get("/api/runs").json()
        seen["/api/runs"] = runs["runs"]  # unfinished runs are not exported
        for run in runs["runs"]:
            detail = client.get(run["api_url"]).json()
            seen[run["api_url"]] = detail
            for sort in ("density", "max_activation", "index"):
                path = f"{run['api_url']}?sort={sort}&page=2"
                seen[path] = client.get(path).json()
            for view in ("findings", "interpretability", "universality"):
                seen[f"{run['api_url']}/{view}"] = _answer(client, f"{run['api_url']}/{view}")
            for study in client.get(f"{run['api_url']}/findings").json().get("case_studies", []):
                seen[study["api_url"]] = _answer(client, study["api_url"])
            step = max(1, -(-run["n_features"] // max_features))
            for index in range(0, run["n_features"], step):
                path = f"{run['api_url']}/features/{index}"
                seen[path] = client.get(path).json()
                seen[f"{path}/family"] = _answer(client, f"{path}/family")
            for token in (" the", "the", "\n", "cat"):
                response = client.get("/api/search", params={"token": token})
                seen[f"search {token!r}"] = response.json()
    return _same_instant(seen)


def export_all(source_url: str, folder: Path, suffix: str = ".jsonl") -> list[Path]:
    engine = make_engine(source_url, read_only=True)
    files = [folder / f"{slug}{suffix}" for _, slug in complete_runs(engine)]
    for path in files:
        export_jsonl(engine, path.name.removesuffix(suffix), path)
    engine.dispose()
    return files


@pytest.mark.parametrize("source", ["fixture_db", "hostile_db"])
def test_round_trip_shows_the_same_pages(
    request: pytest.FixtureRequest, db_url: str, tmp_path: Path, source: str
) -> None:
    original: FixtureDB = request.getfixturevalue(source)
    files = export_all(original.url, tmp_path, ".jsonl.gz")
    assert files
    for path in files:
        import_jsonl(path, db_url)
    before, after = pages(original.url), pages(db_url)
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] == before[key], key


@pytest.fixture(scope="module")
def linked_db(real_run_db: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the tiny real run's database (explanations and scores, ablation effects, findings)
    with a second run of the same SAE analysed beside it and the two matched (links and matches):
    every table a page shows, written by the commands that write them."""
    source = Path(real_run_db.removeprefix("sqlite:///")).parent
    out = tmp_path_factory.mktemp("linked")
    for name in ("lm", "tokens"):
        shutil.copytree(source / name, out / name)
    shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
    shutil.copytree(next(source.glob("sae_*")), out / "again")
    url = f"sqlite:///{out / 'linked.db'}"
    first = [slug for _, slug in complete_runs(make_engine(real_run_db, read_only=True))]
    for run in first:
        assert main(["export", run, "--out", str(out / f"{run}.jsonl"), "--db", real_run_db]) == 0
        assert main(["import", str(out / f"{run}.jsonl"), "--db", url]) == 0
    tiny = ["--preset", "tiny", "--out-dir", str(out), "--db", url]
    assert main(["analyze", *tiny, "--sae", str(out / "again"), "--analysis-tokens", "4096"]) == 0
    sae_run = next(slug for slug in first if not slug.endswith("-neurons"))
    assert main(["match", "--run", sae_run, "--run", "tiny-again", "--db", url]) == 0
    return url


def test_round_trip_keeps_every_table_a_page_shows(linked_db: str, db_url: str, tmp_path: Path) -> None:
    """Interpretations, ablation effects, findings, case studies, links and matches survive export → import,
    whatever order the runs are imported in; and each table was there to lose."""
    engine = make_engine(linked_db, read_only=True)
    with engine.connect() as conn:
        for table in (Interpretation, ExampleEffect, RunFinding, RunLink, FeatureMatch, CaseStudy):
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() > 0, table
    engine.dispose()
    files = export_all(linked_db, tmp_path, ".jsonl.gz")
    written = [import_jsonl(path, db_url)[1] for path in reversed(files)]
    assert sum(w["run_link"] for w in written) == 2 and sum(w["feature_match"] for w in written) > 0
    before, after = pages(linked_db, max_features=48), pages(db_url, max_features=48)
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] == before[key], key
    shown = [v for k, v in before.items() if k.endswith("/universality") and v[0] == 200]
    assert shown, "a universality view to compare"


def test_cli_round_trip_and_bad_input(
    fixture_db: FixtureDB, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, target = tmp_path / "run.jsonl", tmp_path / "target.db"
    assert main(["export", SAE_RUN, "--format", "jsonl", "--out", str(path), "--db", fixture_db.url]) == 0
    assert main(["import", str(path), "--db", str(target)]) == 0
    assert main(["import", str(path), "--db", str(target), "--run-name", "copy"]) == 0
    capsys.readouterr()
    after = pages(f"sqlite:///{target}")
    assert {run["slug"] for run in after["/api/runs"]} == {SAE_RUN, "copy"}
    assert after["/api/runs/copy/features/3"]["label"] == after[f"/api/runs/{SAE_RUN}/features/3"]["label"]

    lines = path.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    bad_files = {
        "truncated": ("".join(lines[: len(lines) // 2]), "ends without its end line"),
        "cut mid-line": ("".join(lines)[: -len(lines[-1]) - 40], "not valid JSON"),
        "corrupt": ("".join(lines[:5]) + "{garbage\n" + "".join(lines[5:]), "line 6: not valid JSON"),
        "wrong version": (json.dumps({**header, "version": 99}) + "\n" + "".join(lines[1:]), "version 99"),
        "not ours": ('{"hello": 1}\n', "not a monosemantic-run file"),
        "missing rows": ("".join(lines[:3] + lines[4:]), "row counts"),
        "taken name": ("".join(lines), f"already has a run '{SAE_RUN}'"),
    }
    state = pages(f"sqlite:///{target}")
    for name, (text, message) in bad_files.items():
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text(text)
        fresh = tmp_path / f"fresh-{name.replace(' ', '-')}.db"
        for db in (target, fresh):
            if name == "taken name" and db == fresh:
                continue
            assert main(["import", str(bad), "--db", str(db)]) == 2, name
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and message in err and "\n" not in err, (name, err)
        assert not fresh.exists(), f"{name}: a fresh target database was created"
    assert pages(f"sqlite:///{target}") == state  # the target holds what it held before

    assert main(["export", "no-such-run", "--out", str(tmp_path / "x.jsonl"), "--db", fixture_db.url]) == 2
    assert "no complete run 'no-such-run'" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_import_is_one_transaction(fixture_db: FixtureDB, tmp_path: Path) -> None:
    """A row the database rejects half way (a duplicate key) leaves no run behind."""
    path = tmp_path / "run.jsonl"
    export_all(fixture_db.url, tmp_path)
    path = tmp_path / f"{SAE_RUN}.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    feature_lines = [i for i, line in enumerate(lines) if line.startswith('{"type": "feature"')]
    duplicated = lines[: feature_lines[-1]] + [lines[feature_lines[0]]] + lines[feature_lines[-1] + 1 :]
    path.write_text("".join(duplicated))
    target = f"sqlite:///{tmp_path / 'target.db'}"
    with pytest.raises(RunFileError, match="the database refused a row .*UNIQUE"):
        import_jsonl(path, target)
    assert header["counts"]["feature"] > 1
    assert complete_runs(make_engine(target)) == []


def test_neuronpedia_layout(fixture_db: FixtureDB, tmp_path: Path) -> None:
    engine = make_engine(fixture_db.url, read_only=True)
    folder = export_neuronpedia(engine, SAE_RUN, tmp_path)
    engine.dispose()
    assert folder == tmp_path / "tiny-lm" / f"0-{SAE_RUN}"
    read = lambda sub: [  # noqa: E731
        json.loads(line) for line in gzip.open(folder / sub / "batch-0.jsonl.gz", "rt", encoding="utf-8")
    ]
    features, activations, explanations = read("features"), read("activations"), read("explanations")
    with TestClient(create_app(Settings(database_url=fixture_db.url))) as client:
        shown = [client.get(f"/api/runs/{SAE_RUN}/features/{i}").json() for i in range(len(features))]
    assert [f["index"] for f in features] == [str(i) for i in range(len(shown))]
    for row, page in zip(features, shown, strict=True):
        assert (row["modelId"], row["layer"]) == ("tiny-lm", f"0-{SAE_RUN}")
        assert row["frac_nonzero"] == page["density"] and row["maxActApprox"] == page["max_activation"]
        assert row["pos_values"] == [e["value"] for e in page["logit_positive"]]
        assert row["pos_str"] == [e["token"]["text"] for e in page["logit_positive"]]
        assert sum(row["freq_hist_data_bar_heights"]) == sum(page["activation_histogram"]["counts"])
    labelled = {str(p["index"]): p["label"] for p in shown if p["label"]}
    labels = [e for e in explanations if e["typeName"] in ("monosemantic-auto", "monosemantic-human")]
    assert {e["index"]: e["description"] for e in labels} == labelled
    top = [a for a in activations if a["index"] == "0" and a["binMin"] == -1.0]
    page_top = shown[0]["top_examples"]
    assert len(top) == len(page_top) and top[0]["maxValue"] == pytest.approx(page_top[0]["max_activation"])
    assert all(len(a["tokens"]) == len(a["values"]) for a in activations)
