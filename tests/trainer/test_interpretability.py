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


# ---------------------------------------------------------------------------- LLM explainer


class FakeChat:
    """A chat-completions server on localhost, in a thread: `reply(body) -> (status, payload)`."""

    def __init__(self, reply) -> None:
        import http.server
        import json
        import threading

        self.requests: list[tuple[dict, dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((dict(self.headers), body))
                status, payload = reply(body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def chat(content: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def llm_config(url: str, **overrides: object) -> AnalysisConfig:
    values: dict[str, object] = dict(
        llm_url=url, llm_model="fake-1", llm_max_units=3, llm_retries=1, llm_timeout=5
    )
    values.update(overrides)
    return config(**values)


def test_llm_explanations_are_scored_by_the_same_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    def reply(body: dict) -> tuple[int, dict]:
        unit = int(body["messages"][1]["content"].split()[1].rstrip("."))
        if unit == MONO:
            answer = {
                "explanation": "the word t7",
                "tokens": [{"token": "t7", "weight": 10}, {"token": "nope", "weight": 3}],
            }
        elif unit == MIXTURE:
            answer = {
                "explanation": "t0 and t1",
                "tokens": [{"token": "t0", "weight": 5}, {"token": "t1", "weight": 5}],
            }
        else:
            answer = {
                "explanation": "t7 after t9",
                "contexts": [{"previous": "t9", "token": "t7", "weight": 8}],
            }
        return 200, chat("```json\n" + json.dumps(answer) + "\n```")

    server = FakeChat(reply)
    monkeypatch.setenv("MONOSEMANTIC_LLM_KEY", "sk-test")
    try:
        result = run(llm_config(server.url))
    finally:
        server.close()
    headers, body = server.requests[0]
    assert headers["Authorization"] == "Bearer sk-test" and body["model"] == "fake-1"
    assert '"t7"' in body["messages"][1]["content"]  # explanation-split evidence was shown
    llm = by_unit(result, "llm")
    assert sorted(llm) == [MONO, MIXTURE, CONTEXT]  # llm_max_units: the first three living units
    assert llm[MONO]["explanation"] == "the word t7" and llm[MONO]["score"] > 0.99
    assert llm[MONO]["rules"]["tokens"] == [{"token_id": WORD, "weight": 10.0}]
    assert llm[MIXTURE]["score"] < 0.5
    assert llm[CONTEXT]["score"] > 0.99
    assert len(by_unit(result)) == 5  # the local explanations are all still there
    assert result.summary["llm"]["n_explained"] == 3


def test_llm_failures_are_reported_and_lose_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def reply(body: dict) -> tuple[int, object]:
        calls["n"] += 1
        unit = int(body["messages"][1]["content"].split()[1].rstrip("."))
        if unit == MONO:
            return 200, chat("I think it is about t7")  # not JSON
        if unit == MIXTURE and calls["n"] < 4:
            return 503, {"error": "busy"}  # retried, then fine
        if unit == MIXTURE:
            return 200, chat('{"explanation": "t3", "tokens": [{"token": "t3", "weight": 1}]}')
        return 200, b"not a completion"

    server = FakeChat(reply)
    monkeypatch.delenv("MONOSEMANTIC_LLM_KEY", raising=False)
    try:
        result = run(llm_config(server.url, llm_retries=2))
    finally:
        server.close()
    assert "Authorization" not in server.requests[0][0]
    assert sorted(by_unit(result, "llm")) == [MIXTURE]
    summary = result.summary["llm"]
    assert summary["n_explained"] == 1 and summary["n_failed"] == 2
    assert "not JSON" in summary["first_error"]
    assert len(by_unit(result)) == 5


def test_an_unreachable_endpoint_is_given_up_on_quickly() -> None:
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.perf_counter()
    result = run(llm_config(f"http://127.0.0.1:{port}/v1", llm_max_units=0, llm_retries=0))
    assert time.perf_counter() - started < 30
    summary = result.summary["llm"]
    assert summary["n_explained"] == 0 and summary["n_failed"] == 3  # then it stopped calling
    assert "unreachable" in summary["first_error"]
    assert len(by_unit(result)) == 5


def test_llm_settings_are_checked() -> None:
    from trainer.analysis.llm_explainer import LLMEndpoint

    with pytest.raises(ValueError, match="llm_model"):
        LLMEndpoint.from_settings("http://127.0.0.1:1/v1", None, 5, 0)
    with pytest.raises(ValueError, match="http"):
        LLMEndpoint.from_settings("file:///etc/passwd", "m", 5, 0)
    assert LLMEndpoint.from_settings(None, None, 5, 0) is None
    assert LLMEndpoint("http://h/v1/", "m").chat_url == "http://h/v1/chat/completions"


def test_measured_logit_baseline_of_a_random_model_is_chance() -> None:
    """The logit score's chance level is measured, not assumed: the units' logit effects through a
    re-initialised model (and random unit directions) score within 0.05 of 0.5 against next tokens
    drawn as text draws them (a few frequent tokens, a long tail)."""
    from trainer.analysis.interpretability import logit_baselines, randomised_logit_weights
    from trainer.config import ModelConfig
    from trainer.lm.model import OneLayerTransformer

    torch.manual_seed(0)
    vocab, d_mlp, n_units = 512, 128, 300
    model = OneLayerTransformer(ModelConfig(vocab_size=vocab, n_ctx=16, d_model=64, n_heads=2, d_mlp=d_mlp))
    zipf = 1.0 / torch.arange(1, vocab + 1).double()
    next_tokens = torch.multinomial(zipf / zipf.sum(), n_units * 200, replacement=True).view(n_units, 200)
    next_sum = torch.zeros(vocab, n_units)
    for unit in range(n_units):
        next_sum[:, unit].index_add_(0, next_tokens[unit], torch.rand(200) + 0.1)
    decoder = torch.nn.functional.normalize(torch.randn(n_units, d_mlp), dim=1)
    random_weights = [randomised_logit_weights(model, seed=seed) for seed in (1, 2, 3)]
    assert all(w is not None and w.shape == (d_mlp, vocab) for w in random_weights)
    assert not torch.equal(random_weights[0], random_weights[1])  # type: ignore[arg-type]
    baselines = logit_baselines(
        next_sum,
        decoder,
        model.direct_logit_weights().detach(),
        random_weights,
        10,  # type: ignore[arg-type]
    )
    assert baselines["random_model"] is not None and abs(baselines["random_model"] - 0.5) < 0.05
    assert len(baselines["random_model_medians"]) == 3
    assert baselines["random_directions"] is not None and abs(baselines["random_directions"] - 0.5) < 0.05
    assert randomised_logit_weights(object()) is None


def test_a_script_feature_is_explained_by_its_script_and_scored_fairly() -> None:
    """A unit firing on every Arabic letter, each one rare: the explainer names 'Arabic script'
    (not ten of its letters), the simulator plays class membership, and the score the moments give
    equals a brute-force simulation of those rules."""
    from trainer.analysis.interpretability import add_concepts, predict, token_classes

    rng = np.random.default_rng(5)
    arabic = list(range(20, 40))  # token ids 20-39 are Arabic letters, 0-19 English words
    token_bytes = [f"w{i}".encode() for i in range(20)] + [chr(0x0627 + i).encode() for i in range(20)]
    tokens = rng.integers(0, VOCAB, N_TOKENS)
    acts = np.zeros((N_TOKENS, 2), dtype=np.float32)
    is_arabic = tokens >= 20
    acts[:, 0] = is_arabic * (1.5 + 0.2 * rng.random(N_TOKENS))  # the script feature
    acts[:, 1] = 2.0 * (tokens == 3)  # a one-token feature: no concept
    acts_t = torch.from_numpy(acts)
    cfg = config(explain_tokens=5)
    batches, token_sum, top = stream_pieces(tokens, acts_t, cfg)
    decoder, logit_weights = torch.eye(2), torch.randn(2, VOCAB) * 0.1
    texts = [raw.decode() for raw in token_bytes]

    def interpret(with_bytes: bool) -> dict[int, dict]:
        result = interpret_units(
            batches, tokens, N_CTX, VOCAB, token_sum, top, decoder, logit_weights, cfg, texts,
            log=lambda _: None, token_bytes=token_bytes if with_bytes else None,
        )  # fmt: skip
        return by_unit(result)

    member = token_classes(token_bytes)
    assert member[0, arabic].all() and not member[0, :20].any()  # CONCEPTS[0] is Arabic script
    rows, tokens_only = interpret(True), interpret(False)
    assert rows[0]["rules"]["concept"]["name"] == "Arabic script"
    assert rows[0]["explanation"].startswith("Arabic script (100% of its activation)")
    assert rows[1]["rules"]["concept"] is None and tokens_only[0]["rules"]["concept"] is None
    assert rows[0]["score"] > 0.95 > tokens_only[0]["score"] + 0.2  # five letters listed miss the rest
    assert rows[0]["score_top_random"] > 0.9
    # The moments' score is the correlation of the rules played on every scoring token.
    split = split_stream(tokens, N_CTX, VOCAB)
    stats = split_pass(batches, split, 2, cfg.explain_candidates)
    expl, _ = local_explanations(batches, split, stats, 2, cfg.explain_tokens, cfg.explain_contexts)
    expl = add_concepts(expl, stats, member)
    held = split.held.nonzero().squeeze(1)
    simulated = predict(expl, torch.zeros_like(held), split.cur[held], split.pair[held], VOCAB)
    expected = np.corrcoef(simulated.numpy(), acts[held.numpy(), 0])[0, 1]
    assert rows[0]["score"] == pytest.approx(expected, abs=1e-6)


def test_units_that_never_fire_get_empty_explanations() -> None:
    """Every unit silent (a dead dictionary, or a stream too short for any unit to fire in the
    explanation split): the explanations list nothing instead of indexing an empty candidate set."""
    cfg = config()
    tokens, acts = synthetic_stream(seed=4)
    acts = torch.zeros_like(acts)
    batches, token_sum, top = stream_pieces(tokens, acts, cfg)
    split = split_stream(tokens, N_CTX, VOCAB)
    stats = split_pass(batches, split, 5, cfg.explain_candidates)
    expl, held_pair_sum = local_explanations(
        batches, split, stats, 5, cfg.explain_tokens, cfg.explain_contexts
    )
    assert expl.pairs.shape == (5, cfg.explain_contexts) and bool((expl.pairs == -1).all())
    assert held_pair_sum.shape == expl.pairs.shape and float(held_pair_sum.abs().sum()) == 0.0
    assert bool((expl.token_ids == -1).all())
