"""The case studies: proxies over split multi-byte tokens, planted units whose specificity and
sensitivity are known exactly, a proxy that raises or matches nothing, and storing that touches
nothing else of the run."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from trainer.analysis.case_studies import Bases, case_studies, unit_measures
from trainer.analysis.case_study_runs import store_case_studies
from trainer.analysis.proxies import (
    BUILTIN_PROXIES,
    FunctionProxy,
    ProxyError,
    RegexProxy,
    TokenContext,
    decode_tokens,
    parse_proxy,
)
from trainer.config import CaseStudyConfig
from trainer.store.database import open_database
from trainer.store.schema import CaseStudy, Feature, Run, RunFinding

KAF = "ك".encode()  # two bytes: byte-level BPE may split them over two tokens
VOCAB = [b"\n", b"a", b"b", b" ", KAF[:1], KAF[1:], b"Z"]
A, B, SPACE, KAF_1, KAF_2, Z = 1, 2, 3, 4, 5, 6
ARABIC = next(p for p in BUILTIN_PROXIES if p.name == "arabic")
N_CTX = 8


def _stream(n_windows: int = 40) -> np.ndarray:
    """Random "a", "b", " " and whole Arabic letters (both halves), in whole windows."""
    rng = np.random.default_rng(0)
    pieces = [[A], [B], [SPACE], [KAF_1, KAF_2]]
    out: list[int] = []
    while len(out) < n_windows * N_CTX:
        piece = pieces[int(rng.integers(4))]
        out += piece if len(out) + len(piece) <= n_windows * N_CTX else [A]
    return np.array(out, dtype=np.int64)


class PlantedLM:
    """A stand-in model whose hook activations are planted on the token ids: neuron 0 fires (1.0)
    on both halves of the Arabic letter and on "b" (polysemantic), neuron 1 (1.0) on "a" and "b".
    It writes the Arabic letter's first half only when neuron 0 is far above anything the text
    makes it (pinned), and its second half after the first."""

    hook, n_ctx, vocab_size, d_in = "planted", N_CTX, len(VOCAB), 2
    logit_effects_note = ""

    def __init__(self) -> None:
        self.module = torch.nn.Identity()

    def activations(self, idx: torch.Tensor) -> torch.Tensor:
        arabic = ((idx == KAF_1) | (idx == KAF_2)).float()
        is_b, is_a = (idx == B).float(), (idx == A).float()
        return torch.stack([arabic + is_b, is_a + is_b], dim=-1)

    def logits(self, idx: torch.Tensor, replacement: Any = None) -> torch.Tensor:
        x = self.activations(idx)
        x = replacement(x) if replacement is not None else x
        logits = torch.zeros(*idx.shape, len(VOCAB))
        logits[..., SPACE] = 0.5
        logits[..., KAF_1] = x[..., 0] - 2.5
        logits[..., KAF_2] = 10.0 * (idx == KAF_1).float()
        return logits


class PlantedSAE:
    """Feature 0 = 3·relu(n0 − n1): exactly the Arabic tokens; feature 1 = 0.5·n0 + 0.5·[n0 > n1]
    fires on them (1.0) and on "b" (0.5); feature 2 never fires."""

    def __init__(self) -> None:
        self.W_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        exact = 3 * torch.relu(x[:, 0] - x[:, 1])
        broad = 0.5 * x[:, 0] + 0.5 * (x[:, 0] > x[:, 1]).float()
        return torch.stack([exact, broad, torch.zeros_like(exact)], dim=1)


def _bases() -> Bases:
    sae = PlantedSAE()
    return Bases(PlantedLM(), sae.encode, sae)  # type: ignore[arg-type]


def _config(**overrides: Any) -> CaseStudyConfig:
    return CaseStudyConfig(n_prompts=4, prompt_tokens=4, generate_tokens=6, tokens_per_batch=64, **overrides)


def test_split_characters_belong_to_both_tokens() -> None:
    text = decode_tokens(np.array([A, KAF_1, KAF_2, SPACE, 0, B]), VOCAB, eot_id=0)
    assert [text.token(t) for t in range(6)] == ["a", "ك", "ك", " ", "\n", "b"]
    assert ARABIC.score(text).tolist() == [0, 1, 1, 0, 0, 0]
    # A byte that is not UTF-8 on its own stays one character, and shifts nothing after it.
    lone = decode_tokens(np.array([KAF_2, A, KAF_1, KAF_2]), VOCAB)
    assert [lone.token(t) for t in range(4)] == ["\udc83", "a", "ك", "ك"]


def test_planted_units_recover_specificity_and_sensitivity() -> None:
    tokens = _stream()
    positive = np.isin(tokens, [KAF_1, KAF_2])
    n_positive, n_b = int(positive.sum()), int((tokens == B).sum())
    results = case_studies(_bases(), tokens, VOCAB, [ARABIC], _config(pin_scale=2.0))
    study = results["arabic"]
    assert study["status"] == "ok" and study["n_positive"] == n_positive

    feature = study["feature"]  # the exact unit: all of its mass and firings on Arabic, all Arabic
    assert feature["index"] == 0 and feature["correlation"] == pytest.approx(1.0)
    assert feature["specificity"] == 1.0 and feature["sensitivity"] == 1.0
    assert [t["share"] for t in feature["thresholds"]] == [1.0, 1.0, 1.0]
    assert sum(feature["histogram"]["negative"]) == 0
    assert sum(feature["histogram"]["positive"]) == n_positive

    neuron = study["neuron"]  # the polysemantic neuron 0: Arabic and "b", equal activations
    assert neuron["index"] == 0
    assert neuron["specificity"] == pytest.approx(n_positive / (n_positive + n_b))
    assert neuron["sensitivity"] == 1.0
    assert neuron["thresholds"][0]["share"] == pytest.approx(n_positive / (n_positive + n_b))
    assert sum(neuron["histogram"]["negative"]) == n_b

    # Pinned at twice its largest activation, the exact feature makes the model write Arabic (all
    # but a trailing half letter); the neuron, pinned alike, does not. Unpinned, it only completes
    # a letter a prompt ended halfway through.
    effect = study["downstream"]
    assert effect["unpinned"] < 0.1
    assert effect["feature"]["value"] == pytest.approx(6.0) and effect["feature"]["pinned"] >= 0.8
    assert effect["neuron"]["value"] == pytest.approx(2.0)
    assert effect["pin_scale"] == 2.0
    assert effect["neuron"]["pinned"] == effect["unpinned"]
    assert len(effect["samples"]) == 3 and "كك" in effect["samples"][0]["feature"]


def test_unit_measures_on_a_broad_unit() -> None:
    """The broad feature fires 1.0 on every positive and 0.5 on unrelated tokens: its mass share and
    its share above each threshold are the planted ones; one firing on half the positives has
    sensitivity one half."""
    positive = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    broad = np.array([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0, 0])
    measures = unit_measures(broad, positive, (0.0, 0.25, 0.5), bins=4)
    assert measures["specificity"] == pytest.approx(4 / (4 + 2))
    assert measures["sensitivity"] == 1.0
    assert [(t["n_firing"], t["share"]) for t in measures["thresholds"]] == [(8, 0.5), (8, 0.5), (4, 1.0)]
    assert measures["histogram"]["positive"] == [0, 0, 0, 4]
    assert measures["histogram"]["negative"] == [0, 0, 4, 0]  # bins [0, .25), [.25, .5), [.5, .75), [.75, 1]
    half = unit_measures(np.array([2.0, 0, 2.0, 0, 0, 0, 0, 0, 0, 0]), positive, (0.0,), bins=4)
    assert half["sensitivity"] == 0.5 and half["specificity"] == 1.0
    silent = unit_measures(np.zeros(10), positive, (0.0, 0.5), bins=4)
    assert silent["specificity"] is None and silent["thresholds"][1]["share"] is None
    assert silent["histogram"] == {"edges": [], "positive": [], "negative": []}


def test_a_raising_proxy_is_reported_and_the_others_still_run() -> None:
    def broken(text: str, context: TokenContext) -> float:
        raise RuntimeError("this proxy is broken")

    nothing = RegexProxy("nothing", "never", "(?!)", pattern=re.compile("(?!)"))
    proxies = [FunctionProxy("broken", "raises", "tests:broken", function=broken), nothing, ARABIC]
    results = case_studies(_bases(), _stream(), VOCAB, proxies, _config())
    assert results["broken"] == {
        "name": "broken",
        "status": "error",
        "error": "RuntimeError: this proxy is broken",
    }
    assert results["nothing"]["status"] == "no_match" and results["nothing"]["n_positive"] == 0
    assert "feature" not in results["nothing"]
    assert results["arabic"]["status"] == "ok"


def test_user_proxies() -> None:
    regex = parse_proxy("letter-b=b+")
    assert regex.score(decode_tokens(np.array([A, B, B]), VOCAB)).tolist() == [0, 1, 1]
    function = parse_proxy("string:capwords")  # any importable function(text, context)
    assert function.name == "capwords" and function.definition == "string:capwords"
    assert parse_proxy("arabic=x").builtin is False
    for bad in ("bad name=x", "x=(", "no_such_module_xyz:f", "nothing"):
        with pytest.raises(ProxyError):
            parse_proxy(bad)


def test_rerunning_replaces_case_studies_only(tmp_path: Any) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'cs.db'}")
    with Session(engine) as session:
        run = Run(
            slug="r", kind="sae", status="complete", model_name="m", variant="topk", d_in=2, n_features=3
        )
        session.add(run)
        session.flush()
        run_id = run.id
        session.add(Feature(run_id=run_id, index=0, density=0.1, max_activation=1.0, mean_activation=0.5))
        session.add(RunFinding(run_id=run_id, key="ablation", data={"helped_share": 0.7}))
        session.commit()

    def snapshot() -> list[Any]:
        with Session(engine) as session:
            features = [(f.index, f.density, f.max_activation) for f in session.scalars(select(Feature))]
            findings = [(f.key, f.data) for f in session.scalars(select(RunFinding))]
            runs = [(r.slug, r.status, r.completed_at) for r in session.scalars(select(Run))]
            return [features, findings, runs]

    def stored() -> dict[str, str]:
        with Session(engine) as session:
            return {c.name: c.status for c in session.scalars(select(CaseStudy))}

    before = snapshot()
    store_case_studies(engine, run_id, {"a": {"status": "ok"}, "b": {"status": "no_match"}})
    store_case_studies(engine, run_id, {"b": {"status": "error", "error": "x"}})
    assert stored() == {"a": "ok", "b": "error"}
    assert snapshot() == before
    engine.dispose()
