"""Kill -9 anywhere: every stage of the pipeline (train-lm, harvest, train-sae, evaluate,
analyze, prerender) is SIGKILLed at seeded random points of a tiny run, then resumed (or re-run),
and checked: no corrupt checkpoint, at most one checkpoint interval lost, the database passes
`PRAGMA integrity_check` and lists only complete runs, whole, and the final result equals an
uninterrupted run's exactly (CPU training on one thread is deterministic, and a resumed run sees
the same batches), with no temporary file left and no unfinished run listed by the app.

Kill points are counts of the calls the project's code makes (killkit.py), drawn by
random.Random(SEED), so a failure replays with the same seed. CI runs KILLS_PER_STAGE = 4 (24
kills); a soak runs more: MONOSEMANTIC_KILLS_PER_STAGE=50 MONOSEMANTIC_KILL_SEED=7 pytest
tests/trainer/test_kill_anywhere.py. Killed analyses
(every analyze kill) were the regression case for the leftover pending runs (trainer/store/database.py).
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).parent))
import killkit  # noqa: E402
from killkit import kill_config  # noqa: E402

from monosemantic.pipeline import run_corpus  # noqa: E402
from trainer.checkpoint import load_training_state  # noqa: E402
from trainer.config import RunConfig  # noqa: E402

KILLS_PER_STAGE = int(os.environ.get("MONOSEMANTIC_KILLS_PER_STAGE", "4"))
SEED = int(os.environ.get("MONOSEMANTIC_KILL_SEED", "13"))
ROOT = Path(__file__).resolve().parents[2]
STAGES = ["train-lm", "harvest", "train-sae", "evaluate", "analyze", "prerender"]
# stage -> whether it resumes (else it runs again from the start)
RESUMES = {
    "train-lm": True,
    "harvest": True,
    "train-sae": True,
    "evaluate": False,
    "analyze": False,
    "prerender": True,
}


@dataclass
class Outcome:
    exit_code: int | None
    report: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Runs stages in processes forked from a server that has imported torch and the project."""

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(killkit.PRELOAD)
        self.n = 0

    def run(self, stage: str, cfg: RunConfig, kill_at: int | None = None) -> Outcome:
        self.n += 1
        report = Path(cfg.out_dir) / f".kill-{self.n}.json"
        process = self.context.Process(target=killkit.run_stage, args=(stage, cfg, kill_at, str(report)))
        process.start()
        process.join(timeout=300)
        if process.is_alive():
            process.kill()
            pytest.fail(f"{stage} hung (kill_at={kill_at}, seed {SEED})")
        body = json.loads(report.read_text()) if report.exists() else {}
        return Outcome(process.exitcode, body)


@dataclass
class Reference:
    snapshots: dict[str, Path]  # stage -> the run directory just before it
    done: Path  # the finished run

    def after(self, stage: str) -> Path:
        """The run directory just after `stage` (analyze: over the finished run, the finished run)."""
        later = STAGES[STAGES.index(stage) + 1 :]
        return self.snapshots[later[0]] if later and stage != "analyze" else self.done

    events: dict[str, int]  # stage -> calls counted in an uninterrupted run
    corpus: Path


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, runner: Runner) -> Reference:
    base = tmp_path_factory.mktemp("kill-reference")
    corpus = base / "corpus-source"
    corpus.mkdir()
    for path in sorted([*(ROOT / "trainer").rglob("*.py"), *(ROOT / "app").rglob("*.py")]):
        (corpus / f"{path.parent.name}-{path.name}.txt").write_text(path.read_text())
    run_dir = base / "run"
    cfg = kill_config(run_dir, corpus)
    run_corpus(cfg)
    snapshots, events = {}, {}
    for stage in STAGES:
        snapshots[stage] = base / f"before-{stage}"
        shutil.copytree(run_dir, snapshots[stage])
        outcome = runner.run(stage, cfg)
        assert outcome.exit_code == 0, _log_tail(cfg, runner)
        events[stage] = outcome.report["events"]
    return Reference(snapshots, run_dir, events, corpus)


def _log_tail(cfg: RunConfig, runner: Runner) -> str:
    log = Path(cfg.out_dir) / f".kill-{runner.n}.log"
    return log.read_text()[-3000:] if log.exists() else "(no log)"


def kill_points(stage: str, total: int, rng: random.Random) -> list[int]:
    """Where to kill each of KILLS_PER_STAGE runs, as a call count of that run. Points are drawn
    over the whole uninterrupted run; a stage that resumes is killed again in its resumed run, so
    there each point is counted from the previous one (the resumed run starts at or before where
    the last one was killed, so it reaches its point, and the kills move through the stage)."""
    points = sorted(rng.randint(1, total) for _ in range(KILLS_PER_STAGE))
    if not RESUMES[stage]:
        return points
    return [max(1, point - previous) for previous, point in zip([0, *points], points, strict=False)]


@pytest.mark.parametrize("stage", [s for s in STAGES if s in RESUMES])
def test_kill_minus_nine_anywhere_then_resume(
    stage: str, reference: Reference, runner: Runner, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    # analyze runs over the finished analysis: the database holds the old runs while it writes
    start = reference.snapshots["prerender" if stage == "analyze" else stage]
    shutil.copytree(start, run_dir)
    cfg = kill_config(run_dir, reference.corpus)
    before = check_database(run_dir)
    rng = random.Random(f"{SEED}-{stage}")
    points = kill_points(stage, reference.events[stage], rng)
    for i, point in enumerate(points):
        outcome = runner.run(stage, cfg, kill_at=point)
        context = f"{stage} kill {i + 1} at call {point} of {reference.events[stage]} (seed {SEED}): {outcome.report}"
        assert outcome.exit_code == -signal.SIGKILL, context + "\n" + _log_tail(cfg, runner)
        check_checkpoints(stage, cfg, outcome.report, context)
        after = check_database(run_dir)
        assert set(after) == set(before), context  # the old runs or the new ones, whole
    final = runner.run(stage, cfg)
    assert final.exit_code == 0, _log_tail(cfg, runner)
    check_checkpoints(stage, cfg, {}, f"{stage} after resuming")
    assert set(check_database(run_dir)) == set(check_database(reference.after(stage)))
    assert_same_result(stage, kill_config(reference.done, reference.corpus), cfg)
    assert not list(run_dir.rglob("*.tmp")), "temporary files of killed writes were left behind"
    assert listed_by_app(run_dir) == listed_by_app(reference.after(stage))


def listed_by_app(run_dir: Path) -> tuple[list[str], list[str]]:
    """The complete and the unfinished runs as the app's front page lists them (/api/runs)."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    if not (run_dir / "monosemantic.db").exists():
        return [], []
    url = f"sqlite:///{run_dir / 'monosemantic.db'}"
    with TestClient(create_app(Settings(database_url=url, response_cache_mb=0))) as client:
        body = client.get("/api/runs").json()
    return [run["slug"] for run in body["runs"]], [run["slug"] for run in body["unfinished"]]


def check_checkpoints(stage: str, cfg: RunConfig, report: dict[str, Any], context: str) -> None:
    """Every checkpoint and artifact on disk reads back; a killed training run lost at most one
    checkpoint interval of steps, a killed harvest at most the shard it was writing."""
    for directory, interval, trains in (
        (cfg.lm_dir, cfg.lm.checkpoint_interval, "train-lm"),
        (cfg.sae_dir, cfg.sae.checkpoint_interval, "train-sae"),
    ):
        checkpoint = directory / "checkpoint.pt"
        saved = load_training_state(checkpoint)["step"] if checkpoint.exists() else 0
        if stage == trains and "step" in report:
            assert saved >= report["step"] - interval, f"{context}: checkpoint at step {saved}"
    for weights in (cfg.lm_dir / "model.safetensors", cfg.sae_dir / "sae_weights.safetensors"):
        if weights.exists():
            assert load_file(weights), context
    shards = sorted(cfg.activations_dir.glob("acts_*.npy"))
    for shard in shards:
        rows = np.load(shard, mmap_mode="r")
        assert rows.shape[1] == cfg.model.d_mlp and len(rows) > 0, f"{context}: {shard.name}"
    if stage == "harvest" and "shard" in report:
        assert len(shards) >= report["shard"] - 1, f"{context}: {len(shards)} shards on disk"


def check_database(run_dir: Path) -> dict[str, int]:
    """{slug: id} of the complete runs, after checking the file's integrity and that each of them
    is whole: every feature, vocabulary token and stored page it should have."""
    path = run_dir / "monosemantic.db"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "runs" not in tables:
            return {}
        complete = conn.execute("SELECT slug, id, n_features FROM runs WHERE status = 'complete'").fetchall()
        for slug, run_id, n_features in complete:
            assert "~pending-" not in slug
            features = conn.execute("SELECT COUNT(*) FROM features WHERE run_id = ?", (run_id,)).fetchone()
            assert features == (n_features,), (
                f"complete run {slug} has {features[0]} of {n_features} features"
            )
            tokens = conn.execute("SELECT COUNT(*) FROM tokens WHERE run_id = ?", (run_id,)).fetchone()
            assert tokens[0] > 0, f"complete run {slug} has no vocabulary"
        if "stored_pages" in tables:
            for (body,) in conn.execute("SELECT body_gzip FROM stored_pages"):
                assert gzip.decompress(body), "a stored page does not decompress"
    return {slug: run_id for slug, run_id, _ in complete}


def assert_same_result(stage: str, expected: RunConfig, actual: RunConfig) -> None:
    if stage == "train-lm":
        _same_tensors(expected.lm_dir / "model.safetensors", actual.lm_dir / "model.safetensors")
        assert _json(expected.lm_dir / "training_log.json") == _json(actual.lm_dir / "training_log.json")
    elif stage == "harvest":
        names = sorted(p.name for p in expected.activations_dir.iterdir())
        assert names == sorted(p.name for p in actual.activations_dir.iterdir())
        for name in names:
            assert (expected.activations_dir / name).read_bytes() == (
                actual.activations_dir / name
            ).read_bytes()
    elif stage == "train-sae":
        _same_tensors(
            expected.sae_dir / "sae_weights.safetensors", actual.sae_dir / "sae_weights.safetensors"
        )
        assert _json(expected.sae_dir / "training_log.json") == _json(actual.sae_dir / "training_log.json")
    elif stage == "evaluate":
        assert _json(expected.eval_dir / "eval.json") == _json(actual.eval_dir / "eval.json")
    elif stage == "analyze":
        assert _analysis(expected.root) == _analysis(actual.root)
    else:
        assert _pages(expected.root) == _pages(actual.root)


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _same_tensors(expected: Path, actual: Path) -> None:
    left, right = load_file(expected), load_file(actual)
    assert left.keys() == right.keys()
    for name in left:
        assert np.array_equal(left[name], right[name]), name


def _analysis(run_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The complete runs' rows in every table of a run, without ids, timestamps or paths (which
    differ between copies); stored pages are prerender's, compared there."""
    with sqlite3.connect(run_dir / "monosemantic.db") as conn:
        runs = dict(conn.execute("SELECT id, slug FROM runs WHERE status = 'complete'").fetchall())
        rows: dict[str, list[tuple[Any, ...]]] = {
            "runs": conn.execute(
                "SELECT slug, kind, variant, n_features, n_tokens_analyzed, metrics, density_histogram "
                "FROM runs WHERE status = 'complete' ORDER BY slug"
            ).fetchall()
        }
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            if "run_id" not in columns or table == "stored_pages":
                continue
            kept = [c for c in columns if c not in ("id", "run_id")]
            quoted = ", ".join(f'"{column}"' for column in kept)  # "index" is a column name
            query = f"SELECT run_id, {quoted} FROM {table}"  # names from the schema
            rows[table] = sorted((runs[r[0]], *r[1:]) for r in conn.execute(query) if r[0] in runs)
    return rows


def _pages(run_dir: Path) -> dict[tuple[int, str], bytes]:
    with sqlite3.connect(run_dir / "monosemantic.db") as conn:
        stored = conn.execute("SELECT run_id, path, body_gzip FROM stored_pages").fetchall()
    return {(run_id, path): gzip.decompress(body) for run_id, path, body in stored}
