"""Each variant's activation and, where it has one, its hand-written backward against autograd."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from saedata import open_activation_source_from, perturbed, sae_cfg, tiny_cfg

from trainer.config import SAE_VARIANTS, SAEVariant
from trainer.sae import VARIANTS, SparseAutoencoder, get_variant, init_train_state
from trainer.sae.variants.batchtopk import batch_topk_threshold
from trainer.sae.variants.jumprelu import StepFunction
from trainer.sae.variants.paper import PaperLossFunction
from trainer.sae.variants.topk import TopKLossFunction


def test_registry_has_every_configurable_variant() -> None:
    assert list(VARIANTS) == list(SAE_VARIANTS) == list(typing.get_args(SAEVariant))
    assert all(get_variant(name).name == name for name in SAE_VARIANTS)


# ---------------------------------------------------------------------------- paper


def test_paper_encode_is_relu_of_centred_input() -> None:
    sae = perturbed(SparseAutoencoder(tiny_cfg()))
    x = torch.randn(8, 16)
    expected = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    assert torch.allclose(sae.encode(x), expected, atol=1e-5)
    x_hat, f = sae(x)
    assert torch.allclose(x_hat, f @ sae.W_dec + sae.b_dec, atol=1e-5)


@pytest.mark.parametrize("sparse_below", [0.0, 1.0])  # the dense and the sparse backward
def test_fused_paper_loss_matches_autograd(sparse_below: float) -> None:
    torch.manual_seed(0)
    sae = SparseAutoencoder(sae_cfg(d_in=16, d_sae=48))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(64, 16).relu()
    loss, _, _, _ = PaperLossFunction.apply(
        x, sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, 0.3, torch.float32, sparse_below
    )
    (2 * loss).backward()
    fused = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    x_hat, f = sae(x)
    reference = (x_hat - x).pow(2).sum(-1).mean() + 0.3 * f.sum(-1).mean()
    (2 * reference).backward()
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-6)
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, fused[name], rtol=1e-5, atol=1e-5), name


# ---------------------------------------------------------------------------- topk


def test_topk_keeps_k_per_row() -> None:
    sae = perturbed(SparseAutoencoder(tiny_cfg(variant="topk")))
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: exactly k survive
    f = sae.encode(torch.randn(64, 16))
    assert torch.equal((f > 0).sum(1), torch.full((64,), 4))


@pytest.mark.parametrize("n_dead", [0, 40])
def test_sparse_topk_loss_matches_autograd(n_dead: int) -> None:
    """The hand-written sparse backward of TopK (+ AuxK when latents are dead) against autograd
    through the dense reference path, in fp32."""
    cfg = sae_cfg(d_in=16, d_sae=48, variant="topk", k=4, aux_k=8, aux_coefficient=0.5, dtype="fp32")
    state = init_train_state(cfg, open_activation_source_from(np.random.default_rng(0).random((256, 16))))
    sae = state.sae
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state.steps_since_fired[:n_dead] = 10_000  # the first n_dead latents count as dead
    x = torch.randn(64, 16).relu()
    dead_idx = state.dead_mask.nonzero().squeeze(1)
    loss, mse, auxk, indices, values, shortfall = TopKLossFunction.apply(
        x, sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, 4, dead_idx, 8, 0.5, torch.float32, 1
    )
    (2 * loss).backward()
    fast = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    ref_loss, ref_mse, ref_auxk, f = get_variant("topk").reference_loss(state, x, step=1)
    (2 * ref_loss).backward()
    assert (float(auxk) > 0) == (n_dead > 0)
    assert shortfall.shape == (n_dead,)  # revive's: how far each dead latent is from firing
    if n_dead:  # a dead latent raised by its shortfall reaches its best row's 4th largest
        pre = sae.pre_activations(x).detach()
        kth = torch.topk(pre, 4, dim=1).values[:, -1]
        best = (pre[:, dead_idx] + shortfall - kth[:, None]).amax(0)
        assert bool((best >= -1e-5).all()) and bool((shortfall >= 0).all())
    for ours, ref in ((loss, ref_loss), (mse, ref_mse), (auxk, ref_auxk)):
        assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-7)
    dense = torch.zeros_like(f).scatter_(1, indices, values)
    assert torch.allclose(dense, f.detach(), atol=1e-6)
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, fast[name], rtol=1e-4, atol=1e-5), name


# ---------------------------------------------------------------------------- batchtopk


def test_batchtopk_keeps_k_times_n_at_train_and_uses_threshold_at_inference() -> None:
    sae = perturbed(SparseAutoencoder(tiny_cfg(variant="batchtopk"))).train()
    with torch.no_grad():
        sae.b_enc.fill_(5.0)
        sae.batchtopk_threshold.zero_()
    x = torch.randn(64, 16)
    f = sae.encode(x)
    assert int((f > 0).sum()) == 4 * 64
    assert float(sae.batchtopk_threshold) > 0  # tracked from the first batch
    sae.eval()
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), pre * (pre > sae.batchtopk_threshold))


def test_batchtopk_revive_lifts_dead_latents_to_the_batch_threshold() -> None:
    """BatchTopK's sparse step reports, for each dead latent, how far its best pre-activation of the
    batch is below the batch threshold; a latent already above it (none here) would get 0."""
    cfg = sae_cfg(
        d_in=16, d_sae=48, variant="batchtopk", k=4, aux_k=8, dtype="fp32", batchtopk_topk_fraction=0.0
    )
    state = init_train_state(cfg, open_activation_source_from(np.random.default_rng(0).random((256, 16))))
    state.steps_since_fired[:10] = 10_000  # the first 10 latents count as dead
    with torch.no_grad():
        state.sae.b_enc[:10] = -50.0  # and never fire
    x = torch.randn(64, 16).relu()
    terms = get_variant("batchtopk").loss_terms(state, x, step=1, count_active=True)
    assert terms.revive is not None
    dead_idx, shortfall = terms.revive
    assert torch.equal(dead_idx, torch.arange(10))
    pre = state.sae.pre_activations(x).detach()
    threshold = float(batch_topk_threshold(pre, 4).clamp_min(0))
    assert torch.allclose(pre[:, :10].amax(0) + shortfall, torch.full((10,), threshold), atol=1e-4)


@pytest.mark.parametrize("rows_all_high", [False, True])
def test_batch_topk_threshold_is_exact(rows_all_high: bool) -> None:
    pre = torch.randn(50, 200)
    if rows_all_high:  # one row holds far more than its 4k candidates of the global top: the fallback
        pre[7] += 100.0
    k = 3
    brute = torch.topk(pre.flatten(), k * 50).values.min()
    assert float(batch_topk_threshold(pre, k)) == float(brute)


# ---------------------------------------------------------------------------- jumprelu


def test_jumprelu_forward_and_straight_through_threshold_gradient() -> None:
    cfg = tiny_cfg(variant="jumprelu", jumprelu_init_threshold=0.5, jumprelu_bandwidth=0.2)
    sae = SparseAutoencoder(cfg)
    threshold = sae.threshold
    assert threshold is not None and torch.allclose(threshold, torch.full((48,), 0.5))
    pre = torch.tensor([[0.3, 0.45, 0.55, 0.9] + [0.0] * 44])
    f = sae.activate(pre)
    assert f[0, :4].tolist() == pytest.approx([0.0, 0.0, 0.55, 0.9])
    # L0 gradient reaches θ only where |pre − θ| < ε/2 (0.45 and 0.55), as −1/ε each (times dθ/dlogθ = θ).
    StepFunction.apply(pre, sae.log_threshold.exp(), cfg.jumprelu_bandwidth).sum().backward()
    grad = sae.log_threshold.grad
    assert grad is not None
    assert grad[1].item() == pytest.approx(-0.5 / 0.2) and grad[2].item() == pytest.approx(-0.5 / 0.2)
    assert grad[0].item() == 0.0 and grad[3].item() == 0.0
