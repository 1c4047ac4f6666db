"""Match analysed runs to each other and store the links: feature splitting and universality.

`match_runs` takes pairs of complete runs from the database, loads each one's model (and SAE) from
its artifacts, streams the same held-out tokens through all of them once, and stores for every
feature its best matches in the other run of each pair, in both directions (schema: RunLink,
FeatureMatch). Runs of one model (dictionaries of different sizes) are linked as 'sizes', runs of
different models as 'seeds'. Runs whose tokenizers or MLP widths differ are never matched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from trainer.analysis.matching import (
    MAX_DENSE_PAIRS,
    Matches,
    PairMatcher,
    best_match_histogram,
    cosine_table,
    match_summary,
    row_correlation,
)
from trainer.analysis.stream import Encode, autocast_context
from trainer.corpus.tokenizer import load_token_split
from trainer.lm.model import OneLayerTransformer
from trainer.store.schema import FeatureMatch, Run, RunLink, StoredPage, Token

Progress = Callable[[str, int, int], None]


class MatchError(ValueError):
    """Two runs that cannot be matched (different tokenizer or MLP width, or not complete)."""


@dataclass
class Side:
    """One run, ready to encode: its model (shared by runs of one model) and its basis."""

    run_id: int
    slug: str
    kind: str
    model_key: str  # runs with the same key share one model forward
    model: OneLayerTransformer
    encode: Encode
    decoder: torch.Tensor  # [n_features, d_mlp]
    logit_weights: torch.Tensor  # [n_features, vocab]: direct effect on the next-token logits

    @property
    def n_features(self) -> int:
        return int(self.decoder.shape[0])


def vocabulary(session: Session, run_id: int) -> list[bytes]:
    return list(session.scalars(select(Token.raw).where(Token.run_id == run_id).order_by(Token.token_id)))


def mismatch_reason(run_a: Run, run_b: Run, vocab_a: Sequence[bytes], vocab_b: Sequence[bytes]) -> str | None:
    """Why two runs cannot be matched, or None if they can."""
    if run_a.id == run_b.id:
        return f"run {run_a.slug!r} cannot be matched with itself"
    for run in (run_a, run_b):
        if run.status != "complete":
            return f"run {run.slug!r} is {run.status}, not complete"
    if run_a.kind != run_b.kind:
        return f"run {run_a.slug!r} holds {run_a.kind} and {run_b.slug!r} {run_b.kind}: only like is matched"
    if run_a.d_in != run_b.d_in:
        return (
            f"runs {run_a.slug!r} and {run_b.slug!r} read MLPs of different widths "
            f"({run_a.d_in} and {run_b.d_in}): their features cannot be matched"
        )
    if list(vocab_a) != list(vocab_b):
        return (
            f"runs {run_a.slug!r} and {run_b.slug!r} use different tokenizers: their activations "
            "are not over the same tokens, so their features cannot be matched"
        )
    if run_a.kind == "neurons" and run_a.model_name == run_b.model_name:
        return f"runs {run_a.slug!r} and {run_b.slug!r} are the neurons of one model"
    return None


def relation_of(run_a: Run, run_b: Run) -> str:
    """'sizes' for two dictionaries of one model, 'seeds' for two models, 'sae-seeds' for two
    dictionaries of one size on one model (another SAE seed: universality's yardstick)."""
    if run_a.model_name != run_b.model_name:
        return "seeds"
    return "sae-seeds" if run_a.n_features == run_b.n_features else "sizes"


def load_side(run: Run, models: dict[str, OneLayerTransformer]) -> Side:
    """The run's model (from its artifacts, loaded once per model) and basis."""
    from trainer.sae import SparseAutoencoder

    if not run.artifacts_path:
        raise MatchError(f"run {run.slug!r} records no artifacts folder: its model cannot be loaded")
    key = str(Path(run.artifacts_path).resolve())
    if key not in models:
        models[key] = OneLayerTransformer.load(Path(run.artifacts_path) / "lm").eval()
    model = models[key]
    direct = model.direct_logit_weights().detach().float()  # [d_mlp, vocab]
    if run.kind == "neurons":
        eye = torch.eye(model.cfg.d_mlp)
        return Side(run.id, run.slug, run.kind, key, model, lambda x: x, eye, direct)
    if not run.sae_path:
        raise MatchError(f"run {run.slug!r} records no SAE folder")
    sae = SparseAutoencoder.load(Path(run.sae_path)).eval()
    decoder = sae.W_dec.detach().float()
    return Side(run.id, run.slug, run.kind, key, model, sae.encode, decoder, decoder @ direct)


@torch.no_grad()
def stream_activations(
    sides: Sequence[Side], tokens: np.ndarray, n_ctx: int, tokens_per_batch: int, dtype: str
) -> Iterator[list[torch.Tensor]]:
    """For each chunk of whole n_ctx windows: every side's activations [T, n_features] (fp32),
    each model run once per chunk."""
    contexts = max(1, tokens_per_batch // n_ctx)
    step = contexts * n_ctx
    for start in range(0, len(tokens) // n_ctx * n_ctx, step):
        ids = torch.from_numpy(np.asarray(tokens[start : start + step], dtype=np.int64)).view(-1, n_ctx)
        mlp: dict[str, torch.Tensor] = {}
        out = []
        with autocast_context(dtype):
            for side in sides:
                if side.model_key not in mlp:
                    mlp[side.model_key] = side.model.mlp_activations(ids).reshape(ids.numel(), -1)
                out.append(side.encode(mlp[side.model_key]).float())
        yield out


@dataclass
class StoredLink:
    run_slug: str
    other_slug: str
    relation: str
    median: float | None


def _pair_rows(a: Side, b: Side, matches: Matches, relation: str) -> list[dict[str, object]]:
    n, k = matches.indices.shape
    flat_a = torch.arange(n).repeat_interleave(k)
    flat_b = matches.indices.reshape(-1)
    logit = row_correlation(a.logit_weights[flat_a], b.logit_weights[flat_b])
    cosine = None
    if relation != "seeds":  # one model: decoder directions are comparable
        unit_a = torch.nn.functional.normalize(a.decoder, dim=1)
        unit_b = torch.nn.functional.normalize(b.decoder, dim=1)
        cosine = (unit_a[flat_a] * unit_b[flat_b]).sum(1)
    correlation = matches.correlation.reshape(-1)
    return [
        {
            "feature_index": int(flat_a[i]),
            "rank": i % k,
            "other_index": int(flat_b[i]),
            "activation_correlation": float(correlation[i]),
            "decoder_cosine": None if cosine is None else float(cosine[i]),
            "logit_correlation": float(logit[i]),
        }
        for i in range(n * k)
    ]


def _store_link(
    engine: Engine,
    a: Side,
    b: Side,
    matches: Matches,
    relation: str,
    n_tokens: int,
    density: torch.Tensor | None = None,
) -> StoredLink:
    histogram = best_match_histogram(matches.best_correlation)
    # Medians overall, over alive units and by density floor, each with a bootstrap interval.
    histogram["summary"] = match_summary(matches.best_correlation.numpy(), density)
    rows = _pair_rows(a, b, matches, relation)
    with engine.begin() as conn:
        old = select(RunLink.id).where(RunLink.run_id == a.run_id, RunLink.other_run_id == b.run_id)
        conn.execute(delete(FeatureMatch).where(FeatureMatch.link_id.in_(old)))
        conn.execute(delete(RunLink).where(RunLink.run_id == a.run_id, RunLink.other_run_id == b.run_id))
        link_id = conn.execute(
            insert(RunLink)
            .values(
                run_id=a.run_id,
                other_run_id=b.run_id,
                relation=relation,
                n_tokens=n_tokens,
                best_match_histogram=histogram,
            )
            .returning(RunLink.id)
        ).scalar_one()
        # Their feature pages now show the link: pages stored before would hide it.
        conn.execute(delete(StoredPage).where(StoredPage.run_id.in_([a.run_id, b.run_id])))
        for start in range(0, len(rows), 5000):
            conn.execute(
                insert(FeatureMatch), [{**row, "link_id": link_id} for row in rows[start : start + 5000]]
            )
    return StoredLink(a.slug, b.slug, relation, histogram["median"])  # type: ignore[arg-type]


def match_runs(
    engine: Engine,
    pairs: Sequence[tuple[str, str]],
    n_tokens: int | None = None,
    k: int = 3,
    n_candidates: int = 32,
    max_dense_pairs: int = MAX_DENSE_PAIRS,
    tokens_per_batch: int = 8192,
    dtype: str = "fp32",
) -> list[StoredLink]:
    """Match each pair of runs (by slug) over the same held-out tokens (the first run's, at most
    `n_tokens`, default: as many as the runs analysed) and store both directions of every pair.
    Correlations are taken in fp32 (`dtype`): bf16 rounding alone moves a rare feature's r.
    Raises MatchError, before any work, if a pair cannot be matched."""
    with Session(engine) as session:
        runs: dict[str, Run] = {}
        for slug in {s for pair in pairs for s in pair}:
            run = session.scalars(select(Run).where(Run.slug == slug)).one_or_none()
            if run is None:
                raise MatchError(f"no run {slug!r} in the database")
            runs[slug] = run
        vocab = {slug: vocabulary(session, run.id) for slug, run in runs.items()}
        for slug_a, slug_b in pairs:
            reason = mismatch_reason(runs[slug_a], runs[slug_b], vocab[slug_a], vocab[slug_b])
            if reason:
                raise MatchError(reason)
        session.expunge_all()
    models: dict[str, OneLayerTransformer] = {}
    order = list(dict.fromkeys(s for pair in pairs for s in pair))
    sides = [load_side(runs[slug], models) for slug in order]
    first = runs[pairs[0][0]]
    assert first.artifacts_path is not None  # checked by load_side  # nosec B101
    val = load_token_split(Path(first.artifacts_path) / "tokens", "val")
    n_ctx = min(side.model.cfg.n_ctx for side in sides)
    limit = n_tokens or min(run.n_tokens_analyzed or len(val) for run in runs.values())
    tokens = val[: min(limit, len(val)) // n_ctx * n_ctx]
    if len(tokens) == 0:
        raise MatchError(f"need at least {n_ctx} held-out tokens to match runs; have {len(val)}")

    position = {slug: i for i, slug in enumerate(order)}
    matchers = []
    for slug_a, slug_b in pairs:
        a, b = sides[position[slug_a]], sides[position[slug_b]]
        relation = relation_of(runs[slug_a], runs[slug_b])
        # Candidates, if the table is too big: by decoder direction within a model, by logit
        # weights (the shared vocabulary) across models.
        similarity = None
        if a.n_features * b.n_features > max_dense_pairs:
            if relation != "seeds":
                similarity = cosine_table(a.decoder, b.decoder)
            else:
                centred_a = a.logit_weights - a.logit_weights.mean(1, keepdim=True)
                centred_b = b.logit_weights - b.logit_weights.mean(1, keepdim=True)
                similarity = cosine_table(centred_a, centred_b)
        matchers.append(
            (
                a,
                b,
                relation,
                PairMatcher(a.n_features, b.n_features, similarity, n_candidates, max_dense_pairs),
            )
        )
    for chunk in stream_activations(sides, tokens, n_ctx, tokens_per_batch, dtype):
        for a, b, _, matcher in matchers:
            matcher.add(chunk[position[a.slug]], chunk[position[b.slug]])
    stored = []
    for a, b, relation, matcher in matchers:
        result = matcher.result(k)
        stored.append(_store_link(engine, a, b, result.a_to_b, relation, result.n_tokens, result.density_a))
        stored.append(_store_link(engine, b, a, result.b_to_a, relation, result.n_tokens, result.density_b))
    return stored
