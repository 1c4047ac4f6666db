"""SAE training stops at the first non-finite step, leaves its last checkpoint as it was, and
resumes from it to the uninterrupted result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from saedata import sae_cfg

from trainer.guard import DivergenceError
from trainer.sae import train_sae


def test_a_nan_weight_stops_training_one_step_later_and_resume_recovers(tmp_path: Path, data_file) -> None:
    path, _ = data_file
    cfg = sae_cfg(n_tokens=256 * 40, checkpoint_interval=10)
    reference = train_sae(cfg, path, tmp_path / "reference", progress=False)
    out = tmp_path / "poisoned"

    def poison(state, stats) -> None:
        if state.step == 25:  # after the checkpoint at step 20
            with torch.no_grad():
                state.sae.W_enc[0, 0] = float("nan")

    with pytest.raises(DivergenceError) as raised:
        train_sae(cfg, path, out, progress=False, on_step=poison)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("train-sae: non-finite training step 26 ")
    assert "--resume" in message
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 20
    assert all(torch.isfinite(t).all() for t in checkpoint["sae"].values())
    assert not (out / "sae_weights.safetensors").exists()

    resumed = train_sae(cfg, path, out, resume=True, progress=False)
    for name, tensor in reference.sae.state_dict().items():
        assert torch.equal(tensor, resumed.sae.state_dict()[name]), name
