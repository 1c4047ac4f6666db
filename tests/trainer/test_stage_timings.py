"""`timings.json`: a stage run several times in one command (one `train-sae` per size) is summed."""

from __future__ import annotations

import json

from monosemantic import pipeline
from trainer.config import preset_config


def test_a_stage_run_twice_in_one_command_records_the_sum_and_a_new_command_replaces_it(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(pipeline, "_TIMED_THIS_PROCESS", set())
    cfg = preset_config("tiny", out_dir=str(tmp_path))
    cfg.root.mkdir(parents=True, exist_ok=True)
    pipeline._record_timing(cfg, "corpus", 2.0)
    pipeline._record_timing(cfg, "train-sae", 1.5)
    pipeline._record_timing(cfg, "train-sae", 2.25)
    timings = json.loads((cfg.root / "timings.json").read_text())
    assert timings == {"corpus": 2.0, "train-sae": 3.8}

    monkeypatch.setattr(pipeline, "_TIMED_THIS_PROCESS", set())  # a new command
    pipeline._record_timing(cfg, "train-sae", 1.0)
    assert json.loads((cfg.root / "timings.json").read_text()) == {"corpus": 2.0, "train-sae": 1.0}
