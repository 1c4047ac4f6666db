"""Matching features across dictionary sizes (splitting) and across models (universality)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.analysis.match_runs import Side, stream_activations
from trainer.analysis.matching import (
    CorrelationAccumulator,
    best_match_histogram,
    cosine_table,
    match_activations,
)
from trainer.config import ModelConfig, SAEConfig
from trainer.lm.model import OneLayerTransformer
from trainer.sae import SparseAutoencoder


def _chunks(a: torch.Tensor, b: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(a[i : i + size], b[i : i + size]) for i in range(0, len(a), size)]


@pytest.mark.parametrize("sparse", [False, True])
def test_streamed_correlation_equals_numpy(sparse: bool) -> None:
    """Sums over chunks give numpy's Pearson r for every pair, on dense and on sparse activations."""
    a = torch.relu(torch.randn(3000, 12) - (2.0 if sparse else 0.0))
    b = torch.relu(torch.randn(3000, 9) - (2.0 if sparse else 0.0)) + 0.3 * a[:, :9]
    accumulator = CorrelationAccumulator(12, 9)
    for chunk_a, chunk_b in _chunks(a, b, 700):
        accumulator.add(chunk_a, chunk_b)
    expected = np.corrcoef(a.numpy().T, b.numpy().T)[:12, 12:]
    np.testing.assert_allclose(accumulator.correlation().numpy(), expected, atol=1e-5)


def test_candidate_correlation_equals_dense() -> None:
    """Restricted to candidates, each accumulated pair has the same r as the full table."""
    a = torch.relu(torch.randn(2000, 20) - 1.5)
    b = torch.relu(torch.randn(2000, 30) - 1.5)
    candidates = torch.randint(0, 30, (20, 5))
    dense, restricted = CorrelationAccumulator(20, 30), CorrelationAccumulator(20, 30, candidates)
    for chunk_a, chunk_b in _chunks(a, b, 512):
        dense.add(chunk_a, chunk_b)
        restricted.add(chunk_a, chunk_b)
    full = dense.correlation()
    np.testing.assert_allclose(
        restricted.correlation().numpy(), full.gather(1, candidates).numpy(), atol=1e-5
    )


def test_dead_feature_correlates_with_nothing() -> None:
    a = torch.zeros(500, 3)
    a[:, 1] = torch.rand(500)
    b = torch.rand(500, 2)
    accumulator = CorrelationAccumulator(3, 2)
    accumulator.add(a, b)
    r = accumulator.correlation()
    assert torch.all(r[0] == 0) and torch.all(r[2] == 0) and torch.isfinite(r).all()


# ---------------------------------------------------------------------------- splitting


def _planted_split(n_tokens: int = 20_000) -> dict[str, torch.Tensor]:
    """Activations x = Σ amplitude × direction with a parent direction p = (c1 + c2)/√2: the small
    dictionary holds p, the large one holds c1 and c2 (and both hold 6 unrelated directions)."""
    d_in = 32
    basis = torch.linalg.qr(torch.randn(d_in, d_in)).Q.T  # orthonormal rows
    child_1, child_2, others = basis[0], basis[1], basis[2:8]
    parent = (child_1 + child_2) / math.sqrt(2)
    concept = torch.randint(0, 8, (n_tokens,))  # 0: child 1, 1: child 2, 2-7: the others
    amplitude = torch.rand(n_tokens) + 0.5
    on = torch.rand(n_tokens) < 0.3  # most tokens carry nothing
    directions = torch.cat([child_1[None], child_2[None], others])
    x = (on * amplitude)[:, None] * directions[concept] + 0.01 * torch.randn(n_tokens, d_in)
    small = torch.cat([others[:3], parent[None], others[3:]])  # parent at index 3
    extra = torch.nn.functional.normalize(torch.randn(4, d_in), dim=1)  # features that never fit
    large = torch.cat([others, extra, child_2[None], child_1[None]])  # children at 10 (c2), 11 (c1)
    return {"x": x, "small": small, "large": large}


def _encode(x: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ decoder.T - 0.2)


def test_splitting_recovers_a_planted_parent_and_its_two_children() -> None:
    planted = _planted_split()
    small, large = _encode(planted["x"], planted["small"]), _encode(planted["x"], planted["large"])
    result = match_activations(_chunks(small, large, 4096), small.shape[1], large.shape[1], k=2)
    # Each child's closest feature in the small dictionary is the parent ...
    assert result.b_to_a.best_index[10] == 3 and result.b_to_a.best_index[11] == 3
    assert result.b_to_a.best_correlation[10] > 0.4 and result.b_to_a.best_correlation[11] > 0.4
    # ... and the parent's two closest in the large one are its children.
    assert set(result.a_to_b.indices[3].tolist()) == {10, 11}
    # The unrelated directions are each other's exact match.
    for i, j in zip([0, 1, 2, 4, 5, 6], range(6), strict=True):
        assert result.a_to_b.best_index[i] == j and result.a_to_b.best_correlation[i] > 0.99
    cosine = cosine_table(planted["small"], planted["large"])
    assert cosine[3, 10] == pytest.approx(1 / math.sqrt(2), abs=1e-5)


def test_splitting_with_candidates_finds_the_same_family() -> None:
    """Above max_dense_pairs, candidates by decoder cosine keep the family."""
    planted = _planted_split()
    small, large = _encode(planted["x"], planted["small"]), _encode(planted["x"], planted["large"])
    similarity = cosine_table(planted["small"], planted["large"])
    result = match_activations(
        _chunks(small, large, 4096), 7, 12, k=2, similarity=similarity, n_candidates=3, max_dense_pairs=10
    )
    assert set(result.a_to_b.indices[3].tolist()) == {10, 11}
    assert result.b_to_a.best_index[10] == 3 and result.b_to_a.best_index[11] == 3


# ---------------------------------------------------------------------------- universality


def _permuted_copy(model: OneLayerTransformer, permutation: torch.Tensor) -> OneLayerTransformer:
    """The same function with its MLP neurons reordered: neuron i of the copy is neuron
    permutation[i] of the original."""
    copy = OneLayerTransformer(model.cfg)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy.mlp.W_in.weight.copy_(model.mlp.W_in.weight[permutation])
        copy.mlp.W_in.bias.copy_(model.mlp.W_in.bias[permutation])
        copy.mlp.W_out.weight.copy_(model.mlp.W_out.weight[:, permutation])
    return copy.eval()


def test_universality_recovers_a_permuted_copy() -> None:
    """Model B = model A with permuted neurons, and an SAE B = SAE A with permuted inputs and
    features: every neuron and feature of A matches its image in B with r ≈ 1."""
    cfg = ModelConfig(vocab_size=300, n_ctx=16, d_model=32, n_heads=2, d_mlp=64)
    model_a = OneLayerTransformer(cfg).eval()
    neuron_perm = torch.randperm(64)
    model_b = _permuted_copy(model_a, neuron_perm)
    sae_a = SparseAutoencoder(SAEConfig(d_in=64, d_sae=96, variant="topk", k=8), seed=1).eval()
    sae_b = SparseAutoencoder(SAEConfig(d_in=64, d_sae=96, variant="topk", k=8), seed=2).eval()
    feature_perm = torch.randperm(96)
    with torch.no_grad():  # B's feature j is A's feature feature_perm[j], reading B's neuron order
        sae_b.W_enc.copy_(sae_a.W_enc[neuron_perm][:, feature_perm])
        sae_b.b_enc.copy_(sae_a.b_enc[feature_perm])
        sae_b.W_dec.copy_(sae_a.W_dec[feature_perm][:, neuron_perm])
        sae_b.b_dec.copy_(sae_a.b_dec[neuron_perm])
    direct_a, direct_b = model_a.direct_logit_weights().detach(), model_b.direct_logit_weights().detach()
    eye = torch.eye(64)
    sides = [
        Side(1, "a-neurons", "neurons", "a", model_a, lambda x: x, eye, direct_a),
        Side(2, "b-neurons", "neurons", "b", model_b, lambda x: x, eye, direct_b),
        Side(
            3,
            "a-sae",
            "sae",
            "a",
            model_a,
            sae_a.encode,
            sae_a.W_dec.detach(),
            sae_a.W_dec.detach() @ direct_a,
        ),
        Side(
            4,
            "b-sae",
            "sae",
            "b",
            model_b,
            sae_b.encode,
            sae_b.W_dec.detach(),
            sae_b.W_dec.detach() @ direct_b,
        ),
    ]
    tokens = np.random.default_rng(0).integers(0, 300, 16 * 200)
    chunks = list(stream_activations(sides, tokens, 16, 512, "fp32"))
    neurons = match_activations(((c[0], c[1]) for c in chunks), 64, 64)
    features = match_activations(((c[2], c[3]) for c in chunks), 96, 96)
    # Neuron i of A is neuron j of B where neuron_perm[j] == i.
    assert torch.equal(neuron_perm[neurons.a_to_b.best_index], torch.arange(64))
    assert torch.equal(neurons.b_to_a.best_index, neuron_perm)
    assert neurons.a_to_b.best_correlation.min() > 0.999
    alive = sides[2].decoder.shape[0] - int((torch.cat([c[2] for c in chunks]).amax(0) == 0).sum())
    matched = feature_perm[features.a_to_b.best_index] == torch.arange(96)
    assert int(matched.sum()) >= alive > 80  # every feature that fires finds its image
    assert features.a_to_b.best_correlation[matched].min() > 0.999
    histogram = best_match_histogram(neurons.a_to_b.best_correlation)
    assert histogram["n"] == 64 and histogram["median"] > 0.999 and sum(histogram["counts"]) == 64


def test_sparse_cross_products_equal_the_dense_matmul() -> None:
    from trainer.analysis.matching import _cross

    a = torch.relu(torch.randn(4096, 300) - 2.5)  # ~0.6% nonzero: the sparse product is chosen
    b = torch.relu(torch.randn(4096, 200) - 2.5)
    torch.testing.assert_close(_cross(a, b), a.T @ b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- medians and the yardstick


def _planted_pair(n_tokens: int = 200_000) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Features of A and their copies in B with known correlations: group g of 20 features fires on
    a share `densities[g]` of the tokens, and B's copy of each is A's with independent noise mixed in
    so that r = `targets[g]` (A's features 80-89 never fire)."""
    generator = torch.Generator().manual_seed(0)
    densities = np.array([3e-3, 3e-4, 3e-5, 5e-2])  # rare groups: below the 1e-4 and 1e-3 floors
    targets = np.array([0.9, 0.7, 0.5, 0.3])
    a = torch.zeros(n_tokens, 90)
    b = torch.zeros(n_tokens, 90)
    for group, (density, r) in enumerate(zip(densities, targets, strict=True)):
        for unit in range(group * 20, group * 20 + 20):
            on = torch.rand(n_tokens, generator=generator) < density
            amplitude = torch.rand(n_tokens, generator=generator) + 1
            a[:, unit] = on * amplitude
            noise_on = torch.rand(n_tokens, generator=generator) < density
            noise = noise_on * (torch.rand(n_tokens, generator=generator) + 1)
            # b = r·a + √(1-r²)·n with a and n independent and alike: corr(a, b) = r.
            b[:, unit] = r * a[:, unit] + math.sqrt(1 - r * r) * noise
    return a, b, densities, targets


def test_medians_by_density_recover_planted_correlations() -> None:
    """Overall, alive and per-density-floor medians of a synthetic pair with known r per density
    group: dead units count at 0 overall, not over the alive; a floor keeps only the denser groups."""
    from trainer.analysis.matching import match_summary

    a, b, _, _ = _planted_pair()
    result = match_activations(_chunks(a, b, 20_000), 90, 90, k=1)
    assert result.density_a is not None
    np.testing.assert_allclose(result.density_a[:20].numpy(), 3e-3, rtol=0.2)
    assert torch.all(result.density_a[80:] == 0)
    summary = match_summary(result.a_to_b.best_correlation.numpy(), result.density_a.numpy(), n_resamples=200)
    best = result.a_to_b.best_correlation.numpy()
    # Each group's best match is its planted copy at about its planted r.
    for group, r in enumerate([0.9, 0.7, 0.5, 0.3]):
        assert abs(float(np.median(best[group * 20 : group * 20 + 20])) - r) < 0.08
    assert summary["overall"]["n"] == 90 and summary["alive"]["n"] == 80
    # Alive: groups r 0.9/0.7/0.5/0.3, 20 each -> median between 0.5 and 0.7; dead units pull overall below.
    assert 0.5 - 0.08 < summary["alive"]["median"] < 0.7 + 0.08
    assert summary["overall"]["median"] < summary["alive"]["median"]
    by_density = summary["by_density"]
    assert set(by_density) == {"1e-05", "0.0001", "0.001"}
    assert by_density["0.001"]["n"] == 40  # groups at 3e-3 (r 0.9) and 5e-2 (r 0.3)
    assert by_density["0.0001"]["n"] == 60  # and 3e-4 (r 0.7): median 0.7
    assert abs(by_density["0.0001"]["median"] - 0.7) < 0.08
    for entry in (summary["overall"], summary["alive"], *by_density.values()):
        low, high = entry["ci"]
        assert low <= entry["median"] <= high


def test_bootstrap_interval_is_fixed_and_narrows_with_more_units() -> None:
    from trainer.analysis.bootstrap import bootstrap_median

    values = np.random.default_rng(1).normal(0.5, 0.2, 4000)
    first, again = bootstrap_median(values, 300), bootstrap_median(values, 300)
    assert first == again
    small = bootstrap_median(values[:100], 300)
    assert (first["ci"][1] - first["ci"][0]) < (small["ci"][1] - small["ci"][0])
    assert bootstrap_median(np.array([]))["median"] is None
