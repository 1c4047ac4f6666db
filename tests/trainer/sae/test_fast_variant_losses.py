"""The hand-written backwards of l1_decnorm, batchtopk and jumprelu (`Variant.loss_terms`) against
autograd through the same variant's `reference_loss`, in fp32 on small random batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from saedata import open_activation_source_from, sae_cfg

from trainer.sae import TrainState, get_variant, init_train_state
from trainer.sae.variants import batchtopk, jumprelu, paper
from trainer.sae.variants.base import LossTerms
from trainer.sae.variants.paper import PaperLossFunction


def make_state(variant: str, n_dead: int = 0, **overrides: object) -> TrainState:
    cfg = sae_cfg(d_in=16, d_sae=48, variant=variant, dtype="fp32", **overrides)
    state = init_train_state(cfg, open_activation_source_from(np.random.default_rng(0).random((256, 16))))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in state.sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state.steps_since_fired[:n_dead] = 10_000  # the first n_dead latents count as dead
    return state


def fast_and_reference(
    state: TrainState, x: torch.Tensor
) -> tuple[LossTerms, LossTerms, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(fast terms, reference terms, fast grads, reference grads) of one step's loss on x."""
    sae, variant = state.sae, get_variant(state.cfg.variant)
    threshold_before = sae.batchtopk_threshold.clone()
    fast = variant.loss_terms(state, x, step=state.cfg.n_steps, count_active=True)
    (2 * fast.loss).backward()
    fast_grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    fast_threshold = sae.batchtopk_threshold.clone()
    sae.batchtopk_threshold.copy_(threshold_before)
    loss, mse, sparsity, f = variant.reference_loss(state, x, step=state.cfg.n_steps)
    reference = LossTerms.from_codes(loss, mse, sparsity, f, count_active=True)
    (2 * reference.loss).backward()
    reference_grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    assert torch.equal(fast_threshold, sae.batchtopk_threshold)  # batchtopk's θ tracked alike
    return fast, reference, fast_grads, reference_grads


def assert_match(
    fast: LossTerms,
    reference: LossTerms,
    fast_grads: dict[str, torch.Tensor],
    reference_grads: dict[str, torch.Tensor],
) -> None:
    for name in ("loss", "mse", "sparsity"):
        ours, ref = float(getattr(fast, name).detach()), float(getattr(reference, name).detach())
        assert ours == pytest.approx(ref, rel=1e-5, abs=1e-7), name
    assert fast.active is not None and reference.active is not None
    assert float(fast.active) == float(reference.active) > 0
    assert torch.equal(fast.fired, reference.fired)
    assert fast_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        assert float(grad.abs().max()) > 0, name  # a gradient that could be wrong
        assert torch.allclose(fast_grads[name], grad, rtol=1e-4, atol=1e-5), name


# ---------------------------------------------------------------------------- l1_decnorm


@pytest.mark.parametrize("sparse_below", [0.0, 1.0])  # paper's dense and sparse backward
def test_l1_decnorm_fast_loss_matches_autograd(sparse_below: float) -> None:
    state = make_state("l1_decnorm", l1_coefficient=0.3)
    sae = state.sae
    x = torch.randn(64, 16).relu()
    loss, mse, l1, counts = PaperLossFunction.apply(
        x, sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, 0.3, torch.float32, sparse_below, True
    )
    fast = LossTerms.from_counts(loss, mse, l1, counts)
    (2 * loss).backward()
    fast_grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    ref_loss, ref_mse, ref_l1, ref_f = get_variant("l1_decnorm").reference_loss(
        state, x, step=state.cfg.n_steps
    )
    (2 * ref_loss).backward()
    reference = LossTerms.from_codes(ref_loss, ref_mse, ref_l1, ref_f, count_active=True)
    reference_grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    assert_match(fast, reference, fast_grads, reference_grads)
    assert torch.equal(counts, (ref_f > 0).sum(0).float())


@pytest.mark.parametrize("variant", ["paper", "l1_decnorm"])
@pytest.mark.parametrize("sparse_below", [0.0, 1.0])
def test_l1_loss_terms_match_autograd(
    variant: str, sparse_below: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `Variant.loss_terms`: the latents' firing counts as well as the gradients."""
    monkeypatch.setattr(paper, "SPARSE_BELOW", sparse_below)
    state = make_state(variant, l1_coefficient=0.3)
    assert_match(*fast_and_reference(state, torch.randn(64, 16).relu()))


# ---------------------------------------------------------------------------- batchtopk


@pytest.mark.parametrize("n_dead", [0, 40])
@pytest.mark.parametrize("last", [0.0, 0.05, 50.0])  # last threshold: none, a pool above it, too high
def test_batchtopk_fast_loss_matches_autograd(n_dead: int, last: float) -> None:
    state = make_state("batchtopk", n_dead=n_dead, k=4, aux_k=8, aux_coefficient=0.5)
    setattr(state.sae, batchtopk.LAST_THRESHOLD, last)
    x = torch.randn(64, 16).relu()
    fast, reference, fast_grads, reference_grads = fast_and_reference(state, x)
    assert (float(fast.sparsity) > 0) == (n_dead > 0)
    assert_match(fast, reference, fast_grads, reference_grads)
    # A varying number of active latents per row, k on average.
    pre = state.sae.pre_activations(x)
    f = get_variant("batchtopk").activate(state.sae, pre)
    per_row = (f > 0).sum(1)
    assert int(per_row.sum()) == 4 * 64 and int(per_row.min()) < int(per_row.max())
    if last == 0.05:  # the pool above 0.8 × the last threshold held the batch's top k·N
        assert int((pre >= 0.8 * last).sum()) >= 4 * 64


def test_batchtopk_widens_a_row_that_holds_the_batch() -> None:
    """One row above every other: the threshold is not among the rows' top 4k candidates, and that
    row gets more than 4k active latents."""
    state = make_state("batchtopk", k=2)
    x = torch.randn(64, 16).relu() * 0.01
    x[5] = 50 * state.sae.W_enc.sum(1).detach().clamp_min(0)
    fast, reference, fast_grads, reference_grads = fast_and_reference(state, x)
    assert_match(fast, reference, fast_grads, reference_grads)
    f = get_variant("batchtopk").reference_loss(state, x, 1)[3]
    assert int((f[5] > 0).sum()) > 4 * 2


# ---------------------------------------------------------------------------- jumprelu


@pytest.mark.parametrize("n_dead", [0, 12])  # with dead latents, the pre-activation loss is on
def test_jumprelu_fast_loss_matches_autograd(monkeypatch: pytest.MonkeyPatch, n_dead: int) -> None:
    monkeypatch.setattr(jumprelu, "SPARSE_BELOW", 1.01)  # the sparse path on a tiny, dense batch
    state = make_state(
        "jumprelu",
        n_dead,
        l1_coefficient=0.7,
        jumprelu_bandwidth=0.4,
        jumprelu_init_threshold=0.3,
        jumprelu_preact_coefficient=0.3,
    )
    assert (jumprelu.preact_weights(state) is None) == (n_dead == 0)
    x = torch.randn(64, 16).relu()
    pre = state.sae.pre_activations(x).detach()
    threshold = state.sae.log_threshold.exp().detach()
    near = ((pre - threshold).abs() < 0.2).sum()
    assert 0 < int(near) and 0 < int((pre > threshold).sum()) < pre.numel() // 2
    assert_match(*fast_and_reference(state, x))
