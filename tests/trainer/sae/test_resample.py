"""Neuron resampling: what a resampled latent gets, and when training resamples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from saedata import sae_cfg

from trainer.sae import init_train_state, open_activation_source, resample_dead_latents, train_sae, train_step


def test_resampling_reinitialises_dead_latents_and_their_adam_state(data_file) -> None:
    path, _ = data_file
    acts = np.load(path)
    cfg = sae_cfg(n_tokens=256 * 100)
    source = open_activation_source(path, 32, 256)
    state = init_train_state(cfg, source)
    dead = torch.arange(0, 192, 4)  # 48 latents that can never fire
    with torch.no_grad():
        state.sae.b_enc[dead] = -1e4
    for _ in range(15):
        train_step(state, next(source))
    state.sae.b_enc.data[dead] = -1e4  # Adam moved them a little; keep them dead
    state.steps_since_fired[:] = torch.where(state.steps_since_fired > 0, 10_000, 0)
    assert torch.equal(state.dead_mask.nonzero().squeeze(1), dead)
    alive = torch.ones(192, dtype=torch.bool)
    alive[dead] = False
    alive_before = {name: getattr(state.sae, name).detach().clone() for name in ("W_enc", "W_dec", "b_enc")}
    mean_alive_norm = float(state.sae.W_enc.detach()[:, alive].norm(dim=0).mean())
    adam_W_enc = state.optimizer.state[state.sae.W_enc]
    assert adam_W_enc["exp_avg"][:, alive].abs().sum() > 0

    result = resample_dead_latents(state)

    sae = state.sae
    assert result.n_dead == 48 and state.resamples == [{"step": 15, "n_dead": 48}]
    assert torch.equal(sae.b_enc[dead], torch.zeros(48))
    assert torch.allclose(sae.W_dec[dead].norm(dim=1), torch.ones(48), atol=1e-5)
    # Each new dictionary vector is the direction of a real input as the SAE sees it (normalised),
    # centred by b_dec.
    centred = torch.from_numpy(acts) * state.input_scale - sae.b_dec.detach()
    centred = centred / centred.norm(dim=1, keepdim=True)
    assert (sae.W_dec[dead].detach() @ centred.T).max(dim=1).values.min() > 0.9999
    expected_enc = sae.W_dec[dead].T * 0.2 * mean_alive_norm
    assert torch.allclose(sae.W_enc[:, dead], expected_enc, atol=1e-6)
    for name, before in alive_before.items():
        after = getattr(sae, name)
        kept = after[alive] if name != "W_enc" else after[:, alive]
        was = before[alive] if name != "W_enc" else before[:, alive]
        assert torch.equal(kept, was)
    for param, index in ((sae.W_enc, (slice(None), dead)), (sae.W_dec, (dead,)), (sae.b_enc, (dead,))):
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(
                state.optimizer.state[param][moment][index],
                torch.zeros_like(state.optimizer.state[param][moment][index]),
            )
    assert adam_W_enc["exp_avg"][:, alive].abs().sum() > 0  # the alive latents' moments are kept
    assert int(state.dead_mask.sum()) == 0
    # The resampled latents now fire.
    assert (sae.encode(torch.from_numpy(acts[:4096]))[:, dead] > 0).any(dim=0).float().mean() > 0.5


def test_training_resamples_at_the_configured_fractions(tmp_path: Path, data_file) -> None:
    path, _ = data_file
    cfg = sae_cfg(
        n_tokens=256 * 40, resample_fractions=(0.5, 0.8), dead_window_fraction=0.1, l1_coefficient=10.0
    )  # so strong that latents die
    result = train_sae(cfg, path, tmp_path, progress=False)
    assert [r["step"] for r in result.resamples] == [20, 32]
    assert result.resamples[1]["n_dead"] > 0
    dead_before = next(row["dead"] for row in result.log if row["step"] == 31)
    assert dead_before > 0 and next(row["dead"] for row in result.log if row["step"] == 32) == 0
