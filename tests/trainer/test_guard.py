"""Training fails loudly and safely: LM divergence stops at its step with the checkpoint intact,
and checkpoints are read without running code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import CheckpointError, atomic_torch_save, load_training_state
from trainer.config import LMTrainConfig, ModelConfig
from trainer.guard import DivergenceError
from trainer.lm.model import OneLayerTransformer
from trainer.lm.train import CHECKPOINT_NAME, train_lm

MODEL = ModelConfig(vocab_size=64, n_ctx=16, d_model=32, n_heads=2, d_mlp=64)


def _tokens(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 64, n).astype(np.uint16)


def test_lm_divergence_stops_at_its_step_and_resume_from_the_checkpoint_works(tmp_path: Path) -> None:
    cfg = LMTrainConfig(
        n_steps=20, batch_size=8, warmup_steps=2, eval_interval=10, checkpoint_interval=10, dtype="bf16"
    )
    train, val = _tokens(5_000, 0), _tokens(1_000, 1)
    train_lm(MODEL, cfg, train, val, tmp_path / "straight")
    out = tmp_path / "diverged"
    train_lm(MODEL, cfg, train, val, out, stop_after_step=10)
    checkpoint = out / CHECKPOINT_NAME
    saved = checkpoint.read_bytes()

    # A learning rate of 1e30 blows the weights up on the first resumed step; the next one is caught.
    exploding = LMTrainConfig(**{**cfg.__dict__, "lr": 1e30})
    with pytest.raises(DivergenceError) as raised:
        train_lm(MODEL, exploding, train, val, out, resume=True)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("train-lm: non-finite training step 12 ")
    assert checkpoint.read_bytes() == saved  # the last good checkpoint, untouched

    train_lm(MODEL, cfg, train, val, out, resume=True)
    straight = OneLayerTransformer.load(tmp_path / "straight").state_dict()
    resumed = OneLayerTransformer.load(out).state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))  # the payload the loader must refuse

    def __init__(self, marker: Path) -> None:
        self.marker = marker


def test_a_crafted_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    crafted = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "model": _RunsCode(marker)}, crafted)
    with pytest.raises(CheckpointError) as raised:
        load_training_state(crafted)
    message = str(raised.value)
    assert "\n" not in message and "posix.system" in message and "could run code" in message
    assert not marker.exists()
    # A plain pickle (not a torch zip) with the same payload is refused too.
    crafted.write_bytes(pickle.dumps({"step": 1, "model": _RunsCode(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="could run code"):
        load_training_state(crafted)
    assert not marker.exists()


def test_a_training_state_of_plain_types_loads_weights_only(tmp_path: Path) -> None:
    state = {"step": 3, "log": [{"step": 1.0}], "config": {"betas": (0.9, 0.95), "name": None}}
    state["weights"] = torch.arange(4.0)
    atomic_torch_save(state, tmp_path / "state.pt")
    loaded = load_training_state(tmp_path / "state.pt")
    assert loaded["config"] == {"betas": (0.9, 0.95), "name": None} and torch.equal(
        loaded["weights"], torch.arange(4.0)
    )
