"""analyze_run against a brute-force reference that materialises every activation of a tiny setup."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from trainer.analysis.analyze import RunAnalysis, analyze_run, neuron_basis, sae_basis
from trainer.analysis.features import auto_label
from trainer.analysis.stream import GroupedTopK
from trainer.config import AnalysisConfig, ModelConfig, SAEConfig
from trainer.lm.model import OneLayerTransformer
from trainer.sae import SparseAutoencoder
from trainer.store.schema import unpack_activations, unpack_token_ids

N_CTX, VOCAB, D_MLP, D_SAE = 16, 64, 64, 96


def tiny_setup(seed: int = 0) -> tuple[OneLayerTransformer, SparseAutoencoder, np.ndarray]:
    torch.manual_seed(seed)
    model = OneLayerTransformer(
        ModelConfig(vocab_size=VOCAB, n_ctx=N_CTX, d_model=32, n_heads=2, d_mlp=D_MLP)
    ).eval()
    sae = SparseAutoencoder(
        SAEConfig(d_in=D_MLP, d_sae=D_SAE, n_tokens=4096, batch_size=512, init_norm=1.0), seed=seed
    )
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-0.15, 0.0, D_SAE))  # a spread of densities, some near-dead
    tokens = np.random.default_rng(seed).integers(0, VOCAB, 5000).astype(np.uint16)
    return model, sae.eval(), tokens


def small_config(**overrides: object) -> AnalysisConfig:
    values: dict[str, object] = dict(
        n_tokens=5000,
        tokens_per_batch=512,
        dtype="fp32",
        n_top_examples=6,
        n_intervals=4,
        examples_per_interval=3,
        histogram_bins=8,
        context_before=5,
        context_after=3,
    )
    values.update(overrides)
    return AnalysisConfig(**values)  # type: ignore[arg-type]


@torch.no_grad()
def all_activations(model: OneLayerTransformer, encode: object, tokens: np.ndarray) -> torch.Tensor:
    """f[N, D] for the stream cut into n_ctx windows, all at once (the brute-force reference)."""
    n = len(tokens) // N_CTX * N_CTX
    ids = torch.from_numpy(tokens[:n].astype(np.int64)).view(-1, N_CTX)
    acts = model.mlp_activations(ids).reshape(n, -1)
    return encode(acts).float()  # type: ignore[operator]


@pytest.fixture(scope="module")
def setup() -> tuple[
    OneLayerTransformer, SparseAutoencoder, np.ndarray, torch.Tensor, RunAnalysis, AnalysisConfig
]:
    model, sae, tokens = tiny_setup()
    cfg = small_config()
    analysis = analyze_run(model, sae_basis(sae), tokens, cfg, progress=None)
    return model, sae, tokens, all_activations(model, sae.encode, tokens), analysis, cfg


def test_densities_means_and_maxima_match_the_reference(setup) -> None:
    _model, _sae, _tokens, acts, analysis, _cfg = setup
    fires = acts > 0
    assert analysis.n_tokens == acts.shape[0] == 4992
    density = np.array([f["density"] for f in analysis.features])
    np.testing.assert_allclose(density, fires.double().mean(0).numpy(), rtol=0, atol=1e-12)
    mean = (acts * fires).sum(0) / fires.sum(0).clamp_min(1)
    np.testing.assert_allclose(
        [f["mean_activation"] for f in analysis.features], mean.numpy(), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        [f["max_activation"] for f in analysis.features], acts.amax(0).numpy(), rtol=1e-5
    )
    # The fixture spans dead, sparse and dense features.
    assert (density == 0).any() and (density > 0).sum() > D_SAE // 2 and density.max() < 1


def test_top_examples_are_the_exact_top_k(setup) -> None:
    _model, _sae, tokens, acts, analysis, cfg = setup
    for feature in range(D_SAE):
        column = acts[:, feature].numpy()
        positive = np.flatnonzero(column > 0)
        order = positive[np.lexsort((positive, -column[positive]))][: cfg.n_top_examples]
        rows = sorted(
            (e for e in analysis.examples if e["feature_index"] == feature and e["kind"] == "top"),
            key=lambda e: e["rank"],
        )
        assert [e["source_position"] for e in rows] == order.tolist()
        np.testing.assert_allclose([e["max_activation"] for e in rows], column[order], rtol=1e-5)


def test_example_windows_carry_every_tokens_activation(setup) -> None:
    _model, _sae, tokens, acts, analysis, cfg = setup
    n = analysis.n_tokens
    for e in analysis.examples[::7]:
        start = max(0, e["source_position"] - cfg.context_before)
        end = min(n, e["source_position"] + cfg.context_after + 1)
        assert e["focus_position"] == e["source_position"] - start
        np.testing.assert_array_equal(unpack_token_ids(e["token_ids"]), tokens[start:end])
        expected = acts[start:end, e["feature_index"]].numpy()
        np.testing.assert_allclose(
            unpack_activations(e["activations"]), expected, rtol=2e-3, atol=1e-4
        )  # fp16 blob


def test_histograms_count_every_nonzero_activation(setup) -> None:
    _model, _sae, _tokens, acts, analysis, cfg = setup
    for feature in (0, 17, 50, D_SAE - 1):
        column = acts[:, feature]
        values = column[column > 0]
        bins = (values * (cfg.histogram_bins / values.max())).long().clamp(0, cfg.histogram_bins - 1)
        histogram = analysis.features[feature]["activation_histogram"]
        assert histogram["counts"] == torch.bincount(bins, minlength=cfg.histogram_bins).tolist()
        assert histogram["edges"][0] == 0 and histogram["edges"][-1] == pytest.approx(float(values.max()))
        assert len(histogram["edges"]) == cfg.histogram_bins + 1


def test_interval_samples_are_inside_their_bands_and_complete_when_small(setup) -> None:
    _model, _sae, _tokens, acts, analysis, cfg = setup
    for feature in range(D_SAE):
        edges = analysis.features[feature]["band_edges"]
        column = acts[:, feature].numpy()
        samples = [e for e in analysis.examples if e["feature_index"] == feature and e["kind"] == "interval"]
        for band in range(cfg.n_intervals):
            in_band = [e for e in samples if e["band"] == band]
            for e in in_band:
                assert edges[band] - 1e-6 <= e["max_activation"] <= edges[band + 1] + 1e-6
                assert e["max_activation"] == pytest.approx(column[e["source_position"]], rel=1e-5)
            population = np.flatnonzero(
                (column > 0)
                & (column >= edges[band])
                & ((column < edges[band + 1]) if band < cfg.n_intervals - 1 else True)
            )
            assert len(in_band) == min(cfg.examples_per_interval, len(population))
            if len(population) <= cfg.examples_per_interval:
                assert sorted(e["source_position"] for e in in_band) == population.tolist()


def test_interval_samples_are_deterministic_given_the_seed() -> None:
    model, sae, tokens = tiny_setup()
    picks = []
    for seed in (0, 0, 1):
        analysis = analyze_run(model, sae_basis(sae), tokens, small_config(seed=seed, tokens_per_batch=1024))
        picks.append(
            [
                (e["feature_index"], e["band"], e["source_position"])
                for e in analysis.examples
                if e["kind"] == "interval"
            ]
        )
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]


def test_interval_sampling_is_uniform() -> None:
    # One group, 10 items, keep 2, many independent streams: each item is kept ~20% of the time.
    kept = np.zeros(10)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2000):
        reservoir = GroupedTopK(1, 2, floor=-1.0)
        for chunk in (range(0, 4), range(4, 10)):
            positions = torch.tensor(list(chunk))
            priorities = torch.rand(len(positions), generator=generator)
            groups = torch.zeros_like(positions)
            mask = reservoir.candidates(groups, priorities)
            reservoir.update(groups[mask], priorities[mask], positions[mask])
        kept[reservoir.positions[0].numpy()] += 1
    np.testing.assert_allclose(kept / 2000, 0.2, atol=0.04)


def test_logit_effects_neighbours_and_token_tables(setup) -> None:
    model, sae, tokens, acts, analysis, cfg = setup
    effect = sae.W_dec.detach() @ model.direct_logit_weights().detach()
    unit = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    cos.fill_diagonal_(-2)
    n = len(tokens) // N_CTX * N_CTX
    ids = torch.from_numpy(tokens[:n].astype(np.int64))
    for feature in (3, 40, 90):
        row = analysis.features[feature]
        top = torch.topk(effect[feature], cfg.n_logit_tokens)
        assert [t["token_id"] for t in row["logit_positive"]] == top.indices.tolist()
        np.testing.assert_allclose(
            [t["value"] for t in row["logit_positive"]], top.values, rtol=1e-4, atol=1e-7
        )
        bottom = torch.topk(effect[feature], cfg.n_logit_tokens, largest=False)
        assert [t["token_id"] for t in row["logit_negative"]] == bottom.indices.tolist()
        assert sum(row["logit_histogram"]["counts"]) == VOCAB
        assert [nb["index"] for nb in row["neighbours"]] == torch.topk(
            cos[feature], cfg.n_neighbours
        ).indices.tolist()
        fires = acts[:, feature] > 0
        counts = torch.bincount(ids[fires], minlength=VOCAB)
        for entry in row["top_tokens"]:
            assert entry["count"] == counts[entry["token_id"]]
            expected = acts[fires & (ids == entry["token_id"]), feature].mean()
            assert entry["mean_activation"] == pytest.approx(float(expected), rel=1e-4)
        assert [t["count"] for t in row["top_tokens"]] == sorted(counts.tolist(), reverse=True)[
            : len(row["top_tokens"])
        ]
    # Search index: per token, features ranked by mean activation over the token's occurrences.
    for token_id in (0, 7, 63):
        occurrences = ids == token_id
        means = acts[occurrences].sum(0) / occurrences.sum()
        means[(acts[occurrences] > 0).sum(0) == 0] = -1
        entries = sorted(
            (r for r in analysis.token_features if r["token_id"] == token_id), key=lambda r: r["rank"]
        )
        assert [r["feature_index"] for r in entries] == torch.topk(
            means, cfg.n_token_features
        ).indices.tolist()
        for r in entries:
            assert r["count"] == int((acts[occurrences, r["feature_index"]] > 0).sum())


def test_bf16_stream_agrees_with_fp32_roughly() -> None:
    model, sae, tokens = tiny_setup()
    exact = analyze_run(model, sae_basis(sae), tokens, small_config())
    fast = analyze_run(model, sae_basis(sae), tokens, small_config(dtype="bf16"))
    for a, b in zip(exact.features, fast.features, strict=True):
        assert b["density"] == pytest.approx(a["density"], abs=0.03)
        assert b["max_activation"] == pytest.approx(a["max_activation"], rel=0.03, abs=2e-3)


def test_neuron_run_uses_the_identity_basis() -> None:
    model, _sae, tokens = tiny_setup()
    cfg = small_config()
    analysis = analyze_run(model, neuron_basis(model), tokens, cfg)
    acts = all_activations(model, lambda x: x, tokens)
    assert len(analysis.features) == D_MLP
    np.testing.assert_allclose(
        [f["max_activation"] for f in analysis.features], acts.amax(0).clamp_min(0), rtol=1e-5
    )
    effect = model.direct_logit_weights().detach()[5]
    assert [t["token_id"] for t in analysis.features[5]["logit_positive"]] == torch.topk(
        effect, cfg.n_logit_tokens
    ).indices.tolist()


def test_labels_are_built_from_the_firing_tokens() -> None:
    assert auto_label([" the", " a"], [50, 20], 100, 1000) == '"·the", "·a" (70% of firings; latin)'
    assert auto_label([], [], 0, 1000).startswith("dead")
    assert auto_label(["x"], [3], 100, 1000).startswith("diffuse")


def test_too_few_tokens_is_a_clear_error() -> None:
    model, sae, tokens = tiny_setup()
    with pytest.raises(ValueError, match="at least one window"):
        analyze_run(model, sae_basis(sae), tokens[:5], replace(small_config(), n_tokens=5))
