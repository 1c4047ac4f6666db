"""evaluate_sae on a tiny random transformer: perfect and zero reconstructions bracket the loss
recovered, and the sparsity statistics add up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import EvalConfig, ModelConfig, SAEConfig
from trainer.evaluate import context_windows, evaluate_sae
from trainer.lm.model import OneLayerTransformer
from trainer.sae import SparseAutoencoder

D_MLP = 64


@pytest.fixture(scope="module")
def model() -> OneLayerTransformer:
    torch.manual_seed(0)
    model = OneLayerTransformer(ModelConfig(vocab_size=64, n_ctx=16, d_model=32, n_heads=2, d_mlp=D_MLP))
    with torch.no_grad():  # at init the logits are near uniform and the MLP barely moves them
        model.mlp.W_out.weight.mul_(20.0)
        model.unembed.weight.mul_(100.0)
    return model.eval()


@pytest.fixture(scope="module")
def val_tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 64, size=3000).astype(np.uint16)


def sae_with(W_enc: torch.Tensor, W_dec: torch.Tensor, variant: str = "paper") -> SparseAutoencoder:
    d_sae = W_enc.shape[1]
    sae = SparseAutoencoder(
        SAEConfig(d_in=D_MLP, d_sae=d_sae, variant=variant, k=min(32, d_sae), batch_size=8, n_tokens=8)
    )
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_perfect_reconstruction_recovers_all_the_loss(model, val_tokens, tmp_path: Path) -> None:
    # MLP activations are ReLU outputs (>= 0), so the identity dictionary reconstructs them exactly.
    identity = sae_with(torch.eye(D_MLP), torch.eye(D_MLP))
    cfg = EvalConfig(n_tokens=1600, batch_contexts=16, dense_threshold=0.1)
    result = evaluate_sae(model, identity, val_tokens, cfg, n_ctx=16, out_dir=tmp_path, progress=False)
    assert result.n_tokens == 1600
    assert abs(result.ce_zero_ablation - result.ce_clean) > 0.1  # the MLP matters in this model
    assert result.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert result.ce_with_sae == pytest.approx(result.ce_clean, abs=1e-5)
    assert result.mse == pytest.approx(0.0, abs=1e-8) and result.fvu == pytest.approx(0.0, abs=1e-8)

    # L0 and densities are the MLP's own firing statistics here.
    windows = torch.from_numpy(context_windows(val_tokens, 16, 1600))
    acts = model.mlp_activations(windows[:, :-1]).reshape(-1, D_MLP)
    firing = (acts > 0).double()
    assert result.l0 == pytest.approx(float(firing.sum(1).mean()))
    assert np.allclose(result.feature_density, firing.mean(0).numpy())
    assert result.dead_fraction == pytest.approx(float((firing.sum(0) == 0).double().mean()))
    assert result.dense_fraction == pytest.approx(float((firing.mean(0) > 0.1).double().mean()))
    assert sum(result.density_hist_counts) + result.n_zero_density == D_MLP
    assert len(result.density_hist_edges) == len(result.density_hist_counts) + 1

    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert "feature_density" not in saved
    assert np.allclose(np.load(tmp_path / "feature_density.npy"), result.feature_density)


def test_zero_reconstruction_recovers_nothing(model, val_tokens) -> None:
    zero = sae_with(torch.eye(D_MLP), torch.zeros(D_MLP, D_MLP))
    result = evaluate_sae(
        model, zero, val_tokens, EvalConfig(n_tokens=800, batch_contexts=16), 16, progress=False
    )
    assert result.ce_loss_recovered == pytest.approx(0.0, abs=1e-5)
    assert result.ce_with_sae == pytest.approx(result.ce_zero_ablation, abs=1e-6)
    assert result.fvu > 0.99  # x̂ = 0: the error is the whole second moment, at least the variance


def test_dead_features_and_fvu_of_a_half_dictionary(model, val_tokens) -> None:
    # Features 0..31 copy the first 32 neurons; 32..63 have an all-negative encoder and never fire.
    W_enc = torch.eye(D_MLP)
    W_enc[:, 32:] = -1.0
    W_dec = torch.eye(D_MLP)
    W_dec[32:] = 0.0
    sae = sae_with(W_enc, W_dec)
    result = evaluate_sae(
        model, sae, val_tokens, EvalConfig(n_tokens=800, batch_contexts=16), 16, progress=False
    )
    assert result.dead_fraction >= 0.5 and result.n_zero_density >= 32
    assert 0.0 < result.fvu < 1.0
    # A random model's loss need not lie between the clean and ablated ones; it only has to differ.
    assert np.isfinite(result.ce_loss_recovered) and abs(result.ce_with_sae - result.ce_clean) > 1e-3


def test_context_windows_do_not_overlap() -> None:
    tokens = np.arange(100, dtype=np.uint32)
    windows = context_windows(tokens, n_ctx=9, max_tokens=1000)
    assert windows.shape == (10, 10) and windows[1, 0] == 10
    spread = context_windows(tokens, n_ctx=9, max_tokens=27)
    assert spread.shape == (3, 10)
    # Spread over the whole split, on the non-overlapping grid: the first, middle and last windows.
    assert spread[:, 0].tolist() == [0, 40, 90]
    with pytest.raises(ValueError, match="too few"):
        context_windows(tokens[:5], n_ctx=9, max_tokens=100)
