"""The child side of the kill -9 tests (test_kill_anywhere.py): run one pipeline stage in a
process forked from a preloaded server, count the calls the project's own code makes, and SIGKILL
the process at the N-th one. The count of an uninterrupted run is deterministic, so a seeded N
replays the same kill point.

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
PRELOAD = ["torch", "numpy", "sqlalchemy", "trainer.pipeline", "trainer.train_lm", "trainer.sae"]
PRELOAD += ["trainer.activations", "trainer.analyze", "trainer.evaluate", "app.prerender", "umap"]


def progress_at(frame: FrameType | None) -> dict[str, Any]:
    """Where the stage was when killed: the training step or harvest shard in progress (1-based:
    an upper bound on the work done in memory), and the innermost frame."""
    where: dict[str, Any] = {}
    if frame is not None:
        where["at"] = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}"
    while frame is not None:
        name, local = frame.f_code.co_name, frame.f_locals
        if name == "train_lm" and isinstance(local.get("step"), int):
            where["step"] = local["step"] + 1
        elif name == "train_sae" and hasattr(local.get("state"), "step"):
            where["step"] = local["state"].step + 1
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

    from trainer import pipeline

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
    from app.prerender import prerender

    prerender(cfg.database_url, processes=1, progress=False)
