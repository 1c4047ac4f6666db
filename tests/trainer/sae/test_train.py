"""Training: feature recovery on synthetic superposition, every variant, and checkpoint / kill -9 /
resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from saedata import sae_cfg

from trainer.checkpoint import CheckpointError
from trainer.config import SAEConfig
from trainer.sae import init_train_state, open_activation_source, train_sae, train_step

REPO = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("variant", ["paper", "l1_decnorm", "topk", "batchtopk", "jumprelu"])
def test_every_variant_trains_without_nan(data_file, variant: str) -> None:
    path, _ = data_file
    # batchtopk_topk_fraction 0: batchtopk's own step from the first (not topk's, its default start).
    cfg = sae_cfg(variant=variant, l1_coefficient=2.0, l1_warmup_fraction=0.05, batchtopk_topk_fraction=0.0)
    source = open_activation_source(path, 32, 256)
    state = init_train_state(cfg, source)
    stats = [train_step(state, next(source)) for _ in range(25)]
    assert all(np.isfinite([s.loss, s.mse, s.sparsity_loss, s.l0]).all() for s in stats)
    assert all(torch.isfinite(p).all() for p in state.sae.parameters())
    assert stats[-1].mse < stats[0].mse
    l0 = stats[-1].l0
    if variant == "topk":
        assert 0 < l0 <= 3 and all(s.l0 <= 3 for s in stats)
    elif variant == "batchtopk":
        # k·N active over the batch, so k per input on average; bf16 ties at the threshold add a few
        # (max 3.094-3.098 over seeds 0-1 on native, AVX2 and scalar kernels; issue 22).
        assert all(3 <= s.l0 < 3.15 for s in stats)
        assert float(state.sae.batchtopk_threshold) > 0
    elif variant == "jumprelu":  # its thresholds start above most pre-activations: L0 grows from ~0
        assert 0 < l0 < 96
    else:  # the sparsity penalty pulls L0 well below the d_sae/2 of a random init
        assert l0 < stats[0].l0 and l0 < 96
    norms = state.sae.W_dec.norm(dim=1)
    if variant == "l1_decnorm":
        assert not torch.allclose(norms, torch.ones(192), atol=1e-3)
    else:
        assert torch.allclose(norms, torch.ones(192), atol=1e-5)


def test_batchtopk_inference_keeps_k_per_row_on_training_rows(data_file, tmp_path: Path) -> None:
    """The saved θ is set from the final weights (Variant.finish_training), not the running
    average that trails them: on the training rows, inference keeps k latents per row."""
    path, _ = data_file
    cfg = sae_cfg(variant="batchtopk", k=4, n_tokens=256 * 30)
    sae = train_sae(cfg, path, tmp_path, progress=False).sae.eval()
    rows = torch.from_numpy(np.load(path)[:8192])
    with torch.no_grad():
        l0 = float((sae.encode(rows) > 0).float().sum(1).mean())
    # 4.02-4.12 over seeds 0-2 and native / AVX2 / scalar kernels (issue 22); the running average
    # it replaced let through ~20% too few.
    assert 3.7 <= l0 <= 4.3, l0


# ---------------------------------------------------------------------------- checkpoints


def weights(sae: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from trainer.config import SAEConfig
from trainer.sae import train_sae
cfg = SAEConfig(**{cfg!r})
def die(state, stats):
    if state.step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a real kill -9
train_sae(cfg, Path({data!r}), Path({out!r}), progress=False, on_step=die)
"""


@pytest.mark.parametrize("variant", ["paper", "topk"])
def test_kill_minus_nine_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, data_file, variant: str
) -> None:
    path, _ = data_file
    # 60 steps, checkpoints every 10, resampling at step 36 with a 6-step dead window: the kill at
    # step 37 loses 7 steps and a resampling, which the resumed run must redo identically.
    values = {
        "d_in": 32,
        "d_sae": 192,
        "batch_size": 256,
        "n_tokens": 256 * 60,
        "k": 3,
        "variant": variant,
        "l1_coefficient": 10.0,
        "lr": 1e-2,
        "checkpoint_interval": 10,
        "resample_fractions": (0.6,),
        "dead_window_fraction": 0.1,
        "seed": 7,
    }
    cfg = SAEConfig(**values)
    reference = train_sae(cfg, path, tmp_path / "reference", progress=False)

    out = tmp_path / "killed"
    script = KILLED_RUN.format(cfg=values, kill_at=37, data=str(path), out=str(out))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 30
    assert not (out / "sae_weights.safetensors").exists()

    resumed = train_sae(cfg, path, out, resume=True, progress=False)
    ref_weights, res_weights = weights(reference.sae), weights(resumed.sae)
    assert ref_weights.keys() == res_weights.keys()
    for name in ref_weights:
        assert torch.equal(ref_weights[name], res_weights[name]), name
    assert resumed.log == reference.log and resumed.resamples == reference.resamples
    if variant == "paper":
        assert reference.resamples[0]["step"] == 36 and reference.resamples[0]["n_dead"] > 0


def test_same_seed_same_result_and_other_seed_differs(tmp_path: Path, data_file) -> None:
    path, _ = data_file
    runs = [
        train_sae(sae_cfg(seed=seed, n_tokens=256 * 5), path, tmp_path / str(i), progress=False)
        for i, seed in enumerate((1, 1, 2))
    ]
    assert torch.equal(runs[0].sae.W_dec, runs[1].sae.W_dec)
    assert not torch.equal(runs[0].sae.W_dec, runs[2].sae.W_dec)


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path: Path, data_file) -> None:
    path, _ = data_file
    cfg = sae_cfg(n_tokens=256 * 10, checkpoint_interval=5)
    train_sae(cfg, path, tmp_path, progress=False)
    checkpoint = tmp_path / "checkpoint.pt"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[: len(good) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as excinfo:
        train_sae(cfg, path, tmp_path, resume=True, progress=False)
    assert "delete it" in str(excinfo.value)
    checkpoint.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train_sae(cfg, path, tmp_path, resume=True, progress=False)
    checkpoint.write_bytes(good)
    with pytest.raises(CheckpointError, match="another SAE run \\(sae.d_sae") as excinfo:
        train_sae(sae_cfg(n_tokens=256 * 10, d_sae=96), path, tmp_path, resume=True, progress=False)
    assert "\n" not in str(excinfo.value)
    # A finished run resumes to the same weights without training further.
    done = train_sae(cfg, path, tmp_path, resume=True, progress=False)
    assert done.final is None and done.n_steps == 10
