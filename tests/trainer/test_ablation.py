"""Ablation effects of analyze_run against a brute-force re-run of the model for each ablation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_analyze import N_CTX, small_config, tiny_setup

from trainer.analysis.analyze import RunAnalysis, analyze_run, neuron_basis, sae_basis
from trainer.lm.model import OneLayerTransformer
from trainer.store.schema import unpack_activations

Reconstruct = Callable[[torch.Tensor], torch.Tensor]  # mlp_post [1, n_ctx, d_mlp] -> x̂


@torch.no_grad()
def brute_force_effect(
    model: OneLayerTransformer,
    tokens: np.ndarray,
    position: int,
    reconstruct: Reconstruct,
    remove: Callable[[torch.Tensor, int], None],
) -> float:
    """Δ log p(next) at `position`, from two full forward passes of its context: x̂ spliced in,
    and x̂ with the feature removed at that position only."""
    start = position // N_CTX * N_CTX
    ids = torch.from_numpy(tokens[start : start + N_CTX].astype(np.int64)).unsqueeze(0)
    mlp_post = model(ids, return_mlp_post=True).mlp_post
    assert mlp_post is not None
    x_hat = reconstruct(mlp_post)
    ablated = x_hat.clone()
    remove(ablated[0], position - start)
    target = int(tokens[position + 1])
    logp = [
        F.log_softmax(model(ids, mlp_replacement=lambda _x, r=r: r).logits[0, position - start], -1)[target]
        for r in (x_hat, ablated)
    ]
    return float(logp[1] - logp[0])


def windows_of_effects(analysis: RunAnalysis) -> list[tuple[int, int, np.ndarray]]:
    """(feature, window start, effects) of each stored effect row, from its top example."""
    focus = {
        (e["feature_index"], e["source_position"]): e["focus_position"]
        for e in analysis.examples
        if e["kind"] == "top"
    }
    return [
        (
            row["feature_index"],
            row["source_position"] - focus[(row["feature_index"], row["source_position"])],
            unpack_activations(row["effects"]),
        )
        for row in analysis.effects
    ]


def check_against_brute_force(
    analysis: RunAnalysis,
    model: OneLayerTransformer,
    tokens: np.ndarray,
    fires: Callable[[int, int], float],
    reconstruct: Reconstruct,
    remove: Callable[[int, float], Callable[[torch.Tensor, int], None]],
    n_windows: int,
) -> int:
    """Compare every token of the first `n_windows` windows that have a firing token; returns how
    many nonzero effects were checked."""
    checked, windows = 0, 0
    for feature, start, effects in windows_of_effects(analysis):
        if windows == n_windows:
            break
        acts = [fires(start + w, feature) for w in range(len(effects))]
        if not any(acts):
            continue
        windows += 1
        for w, (effect, act) in enumerate(zip(effects, acts, strict=True)):
            position = start + w
            if act <= 0:
                assert effect == 0.0  # nothing removed, nothing changed
                continue
            expected = brute_force_effect(model, tokens, position, reconstruct, remove(feature, act))
            # Stored as float16: equal to its rounding.
            assert effect == pytest.approx(expected, abs=2e-3, rel=2e-3), (feature, position)
            checked += 1
    return checked


def test_sae_effects_equal_a_brute_force_rerun() -> None:
    model, sae, tokens = tiny_setup()
    analysis = analyze_run(model, sae_basis(sae), tokens, small_config(), progress=None)
    assert len(analysis.effects) == sum(e["kind"] == "top" for e in analysis.examples)
    n = len(tokens) // N_CTX * N_CTX
    with torch.no_grad():
        ids = torch.from_numpy(tokens[:n].astype(np.int64)).view(-1, N_CTX)
        f = sae.encode(model.mlp_activations(ids).reshape(n, -1))

    def reconstruct(mlp_post: torch.Tensor) -> torch.Tensor:
        return sae.decode(sae.encode(mlp_post.reshape(-1, mlp_post.shape[-1]))).view(mlp_post.shape)

    def remove(feature: int, act: float) -> Callable[[torch.Tensor, int], None]:
        def apply(x_hat: torch.Tensor, at: int) -> None:
            x_hat[at] -= act * sae.W_dec[feature]

        return apply

    checked = check_against_brute_force(
        analysis, model, tokens, lambda p, i: float(f[p, i]), reconstruct, remove, n_windows=12
    )
    assert checked >= 10
    values = np.concatenate([unpack_activations(r["effects"]) for r in analysis.effects])
    assert (values < 0).any() and (values > 0).any()  # both colours occur
    summary = analysis.findings["ablation"]
    assert summary["n_examples"] == len(analysis.effects)
    firing = sum(
        int(np.count_nonzero(unpack_activations(e["activations"]) > 0))
        for e in analysis.examples
        if e["kind"] == "top"
    )
    # The same tokens, up to the float16 rounding of the stored activations (and the stream's last token).
    assert summary["n_firing_tokens"] == pytest.approx(firing, rel=0.01)
    assert 0 < summary["helped_share"] < 1
    assert summary["most_helpful"][0]["mean_focus_effect"] < 0


def test_neuron_effects_zero_ablate_the_neuron() -> None:
    model, _sae, tokens = tiny_setup()
    analysis = analyze_run(model, neuron_basis(model), tokens, small_config(), progress=None)
    n = len(tokens) // N_CTX * N_CTX
    with torch.no_grad():
        ids = torch.from_numpy(tokens[:n].astype(np.int64)).view(-1, N_CTX)
        acts = model.mlp_activations(ids).reshape(n, -1)

    def remove(neuron: int, _act: float) -> Callable[[torch.Tensor, int], None]:
        def apply(x_hat: torch.Tensor, at: int) -> None:
            x_hat[at, neuron] = 0.0

        return apply

    checked = check_against_brute_force(
        analysis, model, tokens, lambda p, i: float(acts[p, i]), lambda x: x, remove, n_windows=3
    )
    assert checked >= 10
