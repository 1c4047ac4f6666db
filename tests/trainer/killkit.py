"""The child side of the kill -9 tests (test_kill_anywhere.py): run one pipeline stage in a
process forked from a preloaded server, count the calls the project's own code makes, and SIGKILL
the process at the N-th one. The count of an uninterrupted run is deterministic, so a seeded N
replays the same kill point.

The server preloads what the stages import, lazily included (torch._dynamo comes with the first
optimizer step, the app with the first stored page), so a child starts in milliseconds and its
CPU goes to the stage. The run is sized (kill_config) to stay under feature_map.MIN_FEATURES:
UMAP's numba compilation alone costs ~11 s of CPU in every process that draws a map.

Counted events: every Python call into trainer/ or app/, and every call from there into C (a
torch op, a file write, an fsync, os.replace, a SQLite statement). The kill lands between two
such events: mid-step, mid-checkpoint (before or after the temporary file's rename), between
the statements of a transaction, between two stored pages.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
OURS = (f"{ROOT / 'trainer'}{os.sep}", f"{ROOT / 'app'}{os.sep}")
PRELOAD = [
    "torch",
    "torch._dynamo",
    "numpy",
    "sqlalchemy",
    "sqlite3",
    "monosemantic.pipeline",
    "trainer.lm.train",
]
PRELOAD += [
    "trainer.sae",
    "trainer.harvest",
    "trainer.analysis.analyze",
    "trainer.evaluate",
    "trainer.lm.hooks",
]
PRELOAD += ["trainer.sae.saelens_format", "app.main", "app.pages.prerender"]
N_UNITS = 7  # neurons and SAE features: below feature_map.MIN_FEATURES (8), so no UMAP


def kill_config(out_dir: Path, corpus: Path) -> Any:
    """The tiny preset made smaller still: the whole chain in about 4 s of CPU."""
    from trainer.config import preset_config

    return preset_config(
        "tiny",
        **{
            "out_dir": str(out_dir),
            "db_url": f"sqlite:///{out_dir / 'monosemantic.db'}",
            "run_name": "killed",
            "corpus.sources": (str(corpus),),
            "corpus.max_bytes": 250_000,
            "tokenizer.vocab_size": 320,
            "tokenizer.bpe_train_bytes": 250_000,
            "tokenizer.val_fraction": 0.1,
            "model.vocab_size": 320,
            "model.n_ctx": 32,
            "model.d_model": 32,
            "model.d_mlp": N_UNITS,
            "lm.n_steps": 40,
            "lm.batch_size": 8,
            "lm.eval_interval": 20,
            "lm.checkpoint_interval": 10,
            "lm.warmup_steps": 5,
            "harvest.n_tokens": 12_000,
            "harvest.shard_rows": 4_000,
            "harvest.batch_contexts": 32,
            "sae.d_in": N_UNITS,
            "sae.d_sae": N_UNITS,
            "sae.k": 4,
            "sae.batch_size": 256,
            "sae.n_tokens": 256 * 40,
            "sae.checkpoint_interval": 10,
            "eval.n_tokens": 2_000,
            "eval.batch_contexts": 16,
            "analysis.n_tokens": 3_000,
            "analysis.n_top_examples": 5,
            "analysis.tokens_per_batch": 1024,
        },
    )


def progress_at(frame: FrameType | None) -> dict[str, Any]:
    """Where the stage was when killed: an upper bound on the training steps done in memory
    (train-lm: the step in progress, 1-based; train-sae: the steps its state has completed), or
    the harvest shard in progress (1-based), and the innermost frame."""
    where: dict[str, Any] = {}
    if frame is not None:
        where["at"] = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}"
    while frame is not None:
        name, local = frame.f_code.co_name, frame.f_locals
        if name == "train_lm" and isinstance(local.get("step"), int):
            where["step"] = local["step"] + 1
        elif name == "train_sae" and hasattr(local.get("state"), "step"):
            where["step"] = local["state"].step  # counts completed steps only
        elif name == "harvest" and isinstance(local.get("index"), int):
            where["shard"] = local["index"] + 1
        frame = frame.f_back
    return where


def run_stage(stage: str, cfg: Any, kill_at: int | None, report: str) -> None:
    """The body of a child: run `stage` (resuming whatever is there); SIGKILL at event `kill_at`,
    else write the event count to `report`."""
    log = open(Path(report).with_suffix(".log"), "w")  # for the life of the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    torch.set_num_threads(1)
    count = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call") and frame.f_code.co_filename.startswith(OURS):
            count += 1
            if count == kill_at:
                Path(report).write_text(json.dumps({"killed_at": count, **progress_at(frame)}))
                os.kill(os.getpid(), signal.SIGKILL)

    from monosemantic import pipeline

    action = {
        "train-lm": lambda: pipeline.run_train_lm(cfg, resume=True),
        "harvest": lambda: pipeline.run_harvest(cfg, resume=True),
        "train-sae": lambda: pipeline.run_train_sae(cfg, resume=True),
        "evaluate": lambda: pipeline.run_evaluate(cfg),
        "analyze": lambda: pipeline.run_analyze(cfg),
        "prerender": lambda: _prerender(cfg),
    }[stage]
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    Path(report).write_text(json.dumps({"events": count}))


def _prerender(cfg: Any) -> None:
    from app.pages.prerender import prerender

    prerender(cfg.database_url, processes=1, progress=False)
