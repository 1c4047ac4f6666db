"""Runs reach the database only complete: pending slugs, failures, kills, re-runs, schema guards.
Every database test runs on SQLite and on PostgreSQL (see the `db_url` fixture in conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, inspect, select, update
from sqlalchemy.exc import SQLAlchemyError

from trainer.analysis.analyze import AnalysisInputs, analyze_and_store, analyze_neurons_and_store
from trainer.config import AnalysisConfig, ModelConfig, RunConfig, SAEConfig, TokenizerConfig
from trainer.sae import SparseAutoencoder
from trainer.store.database import PENDING_MARK, complete_runs, create_pending_run, open_database
from trainer.store.schema import (
    SCHEMA_VERSION,
    DatabaseError,
    Example,
    Feature,
    Run,
    SchemaInfo,
    Token,
    TokenFeature,
    make_engine,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_analyze import D_SAE, VOCAB, small_config, tiny_setup  # noqa: E402

# A NUL byte token, as every byte-level BPE vocabulary has: PostgreSQL text cannot hold NUL.
TOKEN_BYTES = [b"\x00"] + [bytes([32 + i]) for i in range(VOCAB - 1)]


def run_config(tmp_path: Path, **analysis: Any) -> RunConfig:
    return RunConfig(
        out_dir=str(tmp_path),
        run_name="tiny-paper",
        tokenizer=TokenizerConfig(tokenizer_path="bytes"),
        model=ModelConfig(vocab_size=VOCAB, n_ctx=16, d_model=32, n_heads=2, d_mlp=64),
        sae=SAEConfig(d_in=64, d_sae=D_SAE, n_tokens=4096, batch_size=512),
        analysis=small_config(**analysis),
    )


def store(url: str, tmp_path: Path, **kwargs: Any) -> int:
    model, sae, tokens = tiny_setup()
    inputs = AnalysisInputs(
        run_config(tmp_path),
        model,
        TOKEN_BYTES,
        tokens,
        corpus_manifest={"total_bytes": 1},
        db_url=url,
        **kwargs,
    )
    return analyze_and_store(inputs, sae, metrics={"l0": 3.0}, training_log={"sae": []})


def runs(url: str) -> list[tuple[str, str]]:
    engine = open_database(url)
    with engine.connect() as conn:
        rows = conn.execute(select(Run.slug, Run.status).order_by(Run.id)).all()
    engine.dispose()
    return [(str(slug), str(status)) for slug, status in rows]


def row_counts(url: str) -> dict[str, int]:
    engine = open_database(url)
    with engine.connect() as conn:
        counts = {
            t.__tablename__: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in (Run, Feature, Example, Token, TokenFeature)
        }
    engine.dispose()
    return counts


def test_a_run_is_listed_only_once_complete(db_url: str, tmp_path: Path) -> None:
    seen: list[list[tuple[int, str]]] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "analysis: encode" and done == 1:
            seen.append(complete_runs(open_database(db_url)))
            assert [status for _slug, status in runs(db_url)] == ["running"]
            assert PENDING_MARK in runs(db_url)[0][0]

    run_id = store(db_url, tmp_path, progress=progress)
    assert seen == [[]]
    assert complete_runs(open_database(db_url)) == [(run_id, "tiny-paper")]
    engine = open_database(db_url)
    with engine.connect() as conn:
        row = conn.execute(
            select(
                Run.kind,
                Run.n_features,
                Run.n_tokens_analyzed,
                Run.metrics,
                Run.config,
                Run.density_histogram,
                Run.completed_at,
            ).where(Run.id == run_id)
        ).one()
    assert row.kind == "sae" and row.n_features == D_SAE and row.n_tokens_analyzed == 4992
    assert row.metrics == {"l0": 3.0} and row.config["analysis"]["n_top_examples"] == 6
    assert sum(row.density_histogram["counts"]) + row.density_histogram["n_zero"] == D_SAE
    assert row.completed_at is not None
    counts = row_counts(db_url)
    assert counts["features"] == D_SAE and counts["tokens"] == VOCAB and counts["examples"] > D_SAE


def test_a_failure_marks_the_run_failed_and_a_rerun_replaces_it(db_url: str, tmp_path: Path) -> None:
    def explode(stage: str, done: int, total: int) -> None:
        if stage == "database: write" and done > 100:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        store(db_url, tmp_path, progress=explode)
    ((slug, status),) = runs(db_url)
    assert status == "failed" and PENDING_MARK in slug
    assert complete_runs(open_database(db_url)) == []
    assert row_counts(db_url)["features"] == 0  # partial rows dropped

    first = store(db_url, tmp_path)
    second = store(db_url, tmp_path)
    assert runs(db_url) == [("tiny-paper", "complete")]  # the failed attempt and the old run are gone
    assert complete_runs(open_database(db_url)) == [(second, "tiny-paper")] and first != second
    counts = row_counts(db_url)
    assert counts["runs"] == 1 and counts["features"] == D_SAE and counts["tokens"] == VOCAB


KILLED_RUN = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_store import store
    store({url!r}, Path({tmp!r}), progress=lambda stage, done, total: time.sleep(0.5))
""")


def test_a_killed_analysis_never_shows_as_complete(db_url: str, tmp_path: Path) -> None:
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), url=db_url, tmp=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    deadline = time.monotonic() + 60
    try:
        while not _has_runs(db_url):
            if process.poll() is not None:
                pytest.fail(f"the analysis process exited early: {process.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "the analysis never created its run"
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    ((slug, status),) = runs(db_url)
    assert status == "running" and PENDING_MARK in slug
    assert complete_runs(open_database(db_url)) == []

    run_id = store(db_url, tmp_path)
    assert complete_runs(open_database(db_url)) == [(run_id, "tiny-paper")]
    # the killed writer's leftover is gone with it: the app lists no unfinished run
    assert runs(db_url) == [("tiny-paper", "complete")]
    assert row_counts(db_url)["features"] == D_SAE


def test_a_running_writer_keeps_its_pending_run_when_another_publishes(db_url: str, tmp_path: Path) -> None:
    engine = open_database(db_url)
    alive = create_pending_run(
        engine, "tiny-paper", kind="sae", model_name="m", variant="paper", d_in=64, n_features=D_SAE
    )
    engine.dispose()
    run_id = store(db_url, tmp_path)  # this process wrote both: its writer is alive
    assert runs(db_url)[0][1] == "running" and runs(db_url)[1] == ("tiny-paper", "complete")
    assert complete_runs(open_database(db_url)) == [(run_id, "tiny-paper")] and alive != run_id


def _has_runs(url: str) -> bool:
    # Read-only polling: creating the schema here would race the child process doing the same.
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(Run.__tablename__):
                return False
            return conn.execute(select(func.count()).select_from(Run)).scalar_one() > 0
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def test_neurons_are_stored_as_their_own_run(db_url: str, tmp_path: Path) -> None:
    model, _sae, tokens = tiny_setup()
    run_id = analyze_neurons_and_store(
        AnalysisInputs(run_config(tmp_path), model, TOKEN_BYTES, tokens, db_url=db_url)
    )
    engine = open_database(db_url)
    with engine.connect() as conn:
        kind, slug, n = conn.execute(select(Run.kind, Run.slug, Run.n_features).where(Run.id == run_id)).one()
        token = conn.execute(
            select(Token.raw, Token.text, Token.display).where(Token.run_id == run_id, Token.token_id == 1)
        ).one()
    assert (kind, n, slug) == ("neurons", 64, f"{tmp_path.name}-neurons")
    assert tuple(token) == (b" ", " ", "\u00b7")


def test_a_newer_schema_is_refused_and_left_untouched(db_url: str, tmp_path: Path) -> None:
    store(db_url, tmp_path)
    engine = open_database(db_url)
    with engine.begin() as conn:
        conn.execute(update(SchemaInfo).values(version=SCHEMA_VERSION + 1))
    before = row_counts_raw(engine)
    with pytest.raises(DatabaseError, match="newer"):
        store(db_url, tmp_path)
    assert row_counts_raw(engine) == before


def row_counts_raw(engine: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            "runs": conn.execute(select(Run.id, Run.slug, Run.status)).all(),
            "features": conn.execute(select(func.count()).select_from(Feature)).scalar_one(),
        }


def test_mismatched_sae_is_refused_before_writing(tmp_path: Path) -> None:
    model, _sae, tokens = tiny_setup()
    wrong = SparseAutoencoder(SAEConfig(d_in=32, d_sae=64, n_tokens=4096, batch_size=512))
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(ValueError, match="32-dimensional"):
        analyze_and_store(AnalysisInputs(run_config(tmp_path), model, TOKEN_BYTES, tokens, db_url=url), wrong)
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////nonexistent-dir/sub/db.sqlite",
        "postgresql+psycopg://nobody@127.0.0.1:1/nothing",
    ],
)
def test_unreachable_databases_raise_database_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="cannot open database"):
        store(url, tmp_path)


def test_replacing_a_run_gives_its_space_back(tmp_path: Path) -> None:
    """SQLite keeps a replaced run's pages as free pages unless they are reclaimed."""
    url = f"sqlite:///{tmp_path / 'reclaim.db'}"
    store(url, tmp_path)
    engine = open_database(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # incremental
    size_once = (tmp_path / "reclaim.db").stat().st_size
    store(url, tmp_path)  # the same slug again: the first run is replaced
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
    engine.dispose()
    assert runs(url) == [("tiny-paper", "complete")]
    assert (tmp_path / "reclaim.db").stat().st_size <= 1.2 * size_once


def test_nul_byte_token_is_stored_with_its_exact_bytes(db_url: str, tmp_path: Path) -> None:
    store(db_url, tmp_path)
    engine = open_database(db_url)
    with engine.connect() as conn:
        raw, text, display = conn.execute(
            select(Token.raw, Token.text, Token.display).where(Token.token_id == 0)
        ).one()
    engine.dispose()
    assert (bytes(raw), text, display) == (b"\x00", "\u2400", "\u2400")


def test_analysis_config_fields_round_trip() -> None:
    assert AnalysisConfig().dtype == "bf16" and np.isfinite(AnalysisConfig().seed)
