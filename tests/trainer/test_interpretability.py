"""Automatic interpretability on synthetic units with a planted answer, and against a brute-force
simulation over every scoring token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.analysis.interpretability import (
    InterpretabilityResult,
    interpret_units,
    local_explanations,
    predict,
    split_pass,
    split_stream,
)
from trainer.analysis.rows import windows_of
from trainer.analysis.stats import FirstPassAccumulator, Windows, fill_window_activations
from trainer.analysis.stream import SparseBatch, sparsify
from trainer.config import AnalysisConfig

VOCAB, N_CTX, N_TOKENS = 40, 16, 24_000
MONO, MIXTURE, CONTEXT, NOISE, DEAD = range(5)
WORD, FOLLOWER, PREV = 7, 8, 9  # MONO fires on WORD, always followed by FOLLOWER; CONTEXT on WORD after PREV


def synthetic_stream(seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """Tokens, and activations [N, 5] of the planted units."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, N_TOKENS)
    tokens[np.flatnonzero(tokens[:-1] == WORD) + 1] = FOLLOWER
    tokens[np.flatnonzero(tokens == WORD)[::3] - 1] = PREV  # some WORDs come after PREV
    tokens[np.flatnonzero(tokens[:-1] == WORD) + 1] = FOLLOWER
    acts = np.zeros((N_TOKENS, 5), dtype=np.float32)
    acts[:, MONO] = 2.0 * (tokens == WORD)
    # A polysemantic mixture: many token detectors at random strengths, plus token-blind firing.
    strengths = rng.uniform(0.0, 1.0, VOCAB) * (rng.random(VOCAB) < 0.75)
    acts[:, MIXTURE] = strengths[tokens] * rng.random(N_TOKENS) + 2.0 * (rng.random(N_TOKENS) < 0.15)
    after_prev = np.concatenate([[False], tokens[:-1] == PREV])
    after_prev[np.arange(N_TOKENS) % N_CTX == 0] = False
    acts[:, CONTEXT] = 3.0 * ((tokens == WORD) & after_prev)
    acts[:, NOISE] = rng.random(N_TOKENS) * (rng.random(N_TOKENS) < 0.1)
    return tokens, torch.from_numpy(acts)


def config(**overrides: object) -> AnalysisConfig:
    values: dict[str, object] = dict(n_tokens=N_TOKENS, dtype="fp32", n_top_examples=10)
    values.update(overrides)
    return AnalysisConfig(**values)  # type: ignore[arg-type]


def stream_pieces(
    tokens: np.ndarray, acts: torch.Tensor, cfg: AnalysisConfig
) -> tuple[list[SparseBatch], torch.Tensor, Windows]:
    batches = [sparsify(acts[s : s + 4096], s)[0] for s in range(0, len(tokens), 4096)]
    first = FirstPassAccumulator(acts.shape[1], VOCAB, cfg.n_top_examples)
    for batch in batches:
        first.add(batch, torch.from_numpy(tokens[batch.start : batch.start + batch.n_tokens]))
    top = windows_of(first.result.top.positions, None, len(tokens), cfg)
    fill_window_activations(top, batches, acts.shape[1])
    return batches, first.result.token_activation_sum, top


def logit_setup(n_units: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    logit_weights = torch.randn(n_units, VOCAB, generator=generator) * 0.1
    logit_weights[MONO, FOLLOWER] = 5.0  # MONO predicts what really follows WORD
    return torch.eye(n_units), logit_weights


def run(cfg: AnalysisConfig, seed: int = 0) -> InterpretabilityResult:
    tokens, acts = synthetic_stream(seed)
    batches, token_sum, top = stream_pieces(tokens, acts, cfg)
    decoder, logit_weights = logit_setup(acts.shape[1])
    texts = [f"t{i}" for i in range(VOCAB)]
    return interpret_units(
        batches, tokens, N_CTX, VOCAB, token_sum, top, decoder, logit_weights, cfg, texts, log=lambda _: None
    )


@pytest.fixture(scope="module")
def result() -> InterpretabilityResult:
    return run(config())


def by_unit(result: InterpretabilityResult, explainer: str = "local") -> dict[int, dict]:
    return {row["feature_index"]: row for row in result.rows if row["explainer"] == explainer}


def test_the_score_separates_a_monosemantic_unit_from_a_mixture(result) -> None:
    rows = by_unit(result)
    assert rows[MONO]["score"] > 0.99
    assert rows[MIXTURE]["score"] < 0.6
    assert rows[MONO]["score"] - rows[MIXTURE]["score"] > 0.4  # the clear margin
    assert rows[MONO]["score_top_random"] > 0.99
    assert rows[MIXTURE]["score_top_random"] < rows[MONO]["score_top_random"] - 0.2
    assert abs(rows[NOISE]["score"]) < 0.1  # token-blind: nothing to explain
    assert rows[DEAD]["score"] is None and rows[DEAD]["logit_score"] is None
    assert rows[MONO]["explanation"] == '"t7" 2; else 0'
    assert rows[MONO]["rules"]["tokens"][0] == {"token_id": WORD, "weight": pytest.approx(2.0)}


def test_contexts_explain_a_unit_that_needs_the_previous_token(result) -> None:
    row = by_unit(result)[CONTEXT]
    assert {"previous_id": PREV, "token_id": WORD, "weight": pytest.approx(3.0)} in row["rules"]["contexts"]
    assert row["score"] > 0.99
    tokens_only = by_unit(run(config(explain_contexts=0)))[CONTEXT]
    assert tokens_only["score"] < 0.8  # the token alone fires only a third of the time


def test_logit_check_finds_the_unit_that_predicts_its_next_token(result) -> None:
    rows = by_unit(result)
    assert rows[MONO]["logit_score"] == pytest.approx(1.0)
    assert rows[MONO]["logit_top_fraction"] == pytest.approx(1.0)
    assert abs(rows[NOISE]["logit_score"] - 0.5) < 0.1  # chance
    assert result.summary["median_score"] is not None


def test_moment_scores_equal_a_brute_force_simulation() -> None:
    cfg = config()
    tokens, acts = synthetic_stream(seed=3)
    batches, token_sum, top = stream_pieces(tokens, acts, cfg)
    result = interpret_units(
        batches,
        tokens,
        N_CTX,
        VOCAB,
        token_sum,
        top,
        *logit_setup(5),
        cfg,
        [str(i) for i in range(VOCAB)],
        log=lambda _: None,
    )
    split = split_stream(tokens, N_CTX, VOCAB)
    stats = split_pass(batches, split, 5, cfg.explain_candidates)
    expl, _ = local_explanations(batches, split, stats, 5, cfg.explain_tokens, cfg.explain_contexts)
    held = split.held.nonzero().squeeze(1)
    for unit, row in by_unit(result).items():
        if row["score"] is None:
            continue
        units = torch.full_like(held, unit)
        simulated = predict(expl, units, split.cur[held], split.pair[held], VOCAB).numpy()
        assert row["score"] == pytest.approx(np.corrcoef(simulated, acts[held, unit].numpy())[0, 1], abs=1e-6)
    # The explanation never looked at the scoring split: changing it leaves the explanation alone.
    changed = acts.clone()
    changed[split.held] = 0
    batches2, _, _ = stream_pieces(tokens, changed, cfg)
    stats2 = split_pass(batches2, split, 5, cfg.explain_candidates)
    expl2, _ = local_explanations(batches2, split, stats2, 5, cfg.explain_tokens, cfg.explain_contexts)
    assert torch.equal(expl.token_ids, expl2.token_ids) and torch.equal(expl.pairs, expl2.pairs)
    assert torch.allclose(expl.token_weights, expl2.token_weights)
