"""Automatic interpretability of every unit (SAE feature or MLP neuron), measured offline: the
paper's protocol (explain from some text, simulate the unit on other text from the explanation
alone, score by correlation; Bills et al. 2023) with a local explainer in place of the language
model, and the paper's logit-side check.

Splits. The analysed held-out stream is cut by context: even contexts are the explanation split,
odd ones the scoring split, so no scored window was ever seen by the explainer.

Explanation (local). The tokens, and the (previous token, token) contexts, whose presence predicts
the unit's activation on the explanation split, each with the mean activation it predicts there,
plus one weight for every other token. Tokens are ranked by the squared activation they account
for (sum² / count), contexts by how much they improve on their token's weight.

Simulation and scores. The prediction for a token of the scoring split is its context's weight if
listed, else its token's if listed, else the rest weight. `score` is the Pearson correlation
between prediction and activation over every scoring token (the limit of the paper's scoring on
random excerpts); `score_top_random` the correlation over the unit's top-activating scoring windows
together with an equal weight of random scoring text (the paper's top-and-random variant).

Logit side. Over the scoring tokens where the unit fires, weighted by its activation:
`logit_score` is the mean percentile of the actual next token among the unit's direct logit
effects over the vocabulary (1 = the token it raises most; 0.5 = chance), and
`logit_top_fraction` the share whose next token is among its top-k raised tokens.

Everything comes from sums over the sparse activation cache, vectorised over units: two passes
over the cache, no per-unit loop over the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from trainer.analysis.bootstrap import bootstrap_median
from trainer.analysis.llm_explainer import Evidence, LLMEndpoint, LLMRules, explain_units
from trainer.analysis.stats import Windows
from trainer.analysis.stream import GroupedTopK, SparseBatch
from trainer.config import AnalysisConfig
from trainer.store.schema import display_token

CHUNK = 2048
SHOWN_TOKENS, SHOWN_CONTEXTS = 5, 3  # how many the one-line explanation names


# ---------------------------------------------------------------------------- the two splits


@dataclass
class Split:
    """Per stream position: its token, its (previous, current) pair, whether it is scored."""

    vocab: int
    cur: torch.Tensor  # [N] long
    pair: torch.Tensor  # [N] long: prev * vocab + cur; prev = vocab at a context's first token
    held: torch.Tensor  # [N] bool: in the scoring split (odd contexts)
    next: torch.Tensor  # [N] long: the following token in the text, -1 after the last

    @property
    def n_pairs(self) -> int:
        return (self.vocab + 1) * self.vocab


def split_stream(tokens: np.ndarray, n_ctx: int, vocab: int) -> Split:
    cur = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    position = torch.arange(cur.numel())
    prev = torch.cat([torch.tensor([vocab]), cur[:-1]])
    prev[position % n_ctx == 0] = vocab  # the model never saw across a context boundary
    held = (position // n_ctx) % 2 == 1
    following = torch.cat([cur[1:], torch.tensor([-1])])
    return Split(vocab, cur, prev * vocab + cur, held, following)


@dataclass
class SplitStats:
    n_explain: int
    n_held: int
    explain_token_sum: torch.Tensor  # [V, D] float32: activation summed per input token
    explain_count: torch.Tensor  # [V] long: occurrences per token
    held_count: torch.Tensor  # [V] long
    held_sum: torch.Tensor  # [D] float64
    held_square: torch.Tensor  # [D] float64
    next_sum: torch.Tensor  # [V, D] float32: held activation summed per *next* token
    explain_top: GroupedTopK  # per unit: its top positions in the explanation split


def split_pass(
    batches: Iterable[SparseBatch], split: Split, n_features: int, n_candidates: int
) -> SplitStats:
    """One pass over the cache: explanation-split token sums and top positions, scoring-split
    moments and next-token sums."""
    vocab = split.vocab
    stats = SplitStats(
        n_explain=int((~split.held).sum()),
        n_held=int(split.held.sum()),
        explain_token_sum=torch.zeros(vocab, n_features),
        explain_count=torch.bincount(split.cur[~split.held], minlength=vocab),
        held_count=torch.bincount(split.cur[split.held], minlength=vocab),
        held_sum=torch.zeros(n_features, dtype=torch.float64),
        held_square=torch.zeros(n_features, dtype=torch.float64),
        next_sum=torch.zeros(vocab, n_features),
        explain_top=GroupedTopK(n_features, n_candidates, floor=0.0),
    )
    for batch in batches:
        positions = batch.positions
        held = split.held[positions]
        cols, values = batch.cols[~held], batch.values[~held]
        at = positions[~held]
        stats.explain_token_sum.view(-1).index_add_(0, split.cur[at] * n_features + cols, values)
        mask = stats.explain_top.candidates(cols, values)
        stats.explain_top.update(cols[mask], values[mask], at[mask])
        cols, values, at = batch.cols[held], batch.values[held], positions[held]
        stats.held_sum.index_add_(0, cols, values.double())
        stats.held_square.index_add_(0, cols, values.double().square())
        following = split.next[at]
        has_next = following >= 0
        stats.next_sum.view(-1).index_add_(
            0, following[has_next] * n_features + cols[has_next], values[has_next]
        )
    return stats


def pair_sums(
    batches: Iterable[SparseBatch], split: Split, keys: torch.Tensor, n_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation summed over the explanation and the scoring split for each sorted unique key
    unit * n_pairs + pair: ([K], [K]) float64."""
    explain, held = (
        torch.zeros(keys.numel(), dtype=torch.float64),
        torch.zeros(keys.numel(), dtype=torch.float64),
    )
    if keys.numel() == 0:
        return explain, held
    for batch in batches:
        positions = batch.positions
        wanted = batch.cols * split.n_pairs + split.pair[positions]
        found = torch.searchsorted(keys, wanted).clamp_max(keys.numel() - 1)
        hit = keys[found] == wanted
        in_held = split.held[positions] & hit
        in_explain = ~split.held[positions] & hit
        explain.index_add_(0, found[in_explain], batch.values[in_explain].double())
        held.index_add_(0, found[in_held], batch.values[in_held].double())
    return explain, held


def pair_counts(split: Split, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Occurrences of each pair id in the explanation and the scoring split: ([K], [K]) long."""
    counts = []
    for mask in (~split.held, split.held):
        unique, count = torch.unique(split.pair[mask], return_counts=True)
        if unique.numel() == 0:
            counts.append(torch.zeros_like(pairs))
            continue
        found = torch.searchsorted(unique, pairs).clamp_max(unique.numel() - 1)
        counts.append(torch.where(unique[found] == pairs, count[found], 0))
    return counts[0], counts[1]


# ---------------------------------------------------------------------------- explanations


@dataclass
class Explanations:
    """One explanation per unit, as simulation rules; -1 pads the lists."""

    token_ids: torch.Tensor  # [D, Kt] long
    token_weights: torch.Tensor  # [D, Kt] float64
    pairs: torch.Tensor  # [D, Kb] long: pair id (prev * V + cur; prev = V: context start)
    pair_weights: torch.Tensor  # [D, Kb] float64
    rest: torch.Tensor  # [D] float64: every other token
    # A concept (a script or character class, `concepts.py`-style membership [C, V]) per unit: an
    # unlisted token of the class predicts `concept_weight`; -1: none.
    concept: torch.Tensor | None = None  # [D] long
    concept_weight: torch.Tensor | None = None  # [D] float64
    concept_share: torch.Tensor | None = None  # [D] share of its activation on the class's tokens
    member: torch.Tensor | None = None  # [C, V] bool
    concept_names: tuple[str, ...] = ()

    @property
    def n_units(self) -> int:
        return int(self.rest.numel())


def _sorted_lookup(
    keys: torch.Tensor, values: torch.Tensor, wanted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(found mask, value) of `wanted` among unique `keys` (any order)."""
    if keys.numel() == 0:
        return torch.zeros_like(wanted, dtype=torch.bool), torch.zeros(wanted.shape, dtype=torch.float64)
    order = torch.argsort(keys)
    keys, values = keys[order], values[order]
    found = torch.searchsorted(keys, wanted).clamp_max(keys.numel() - 1)
    hit = keys[found] == wanted
    return hit, torch.where(hit, values[found], 0.0)


def token_keys(expl: Explanations) -> tuple[torch.Tensor, torch.Tensor, int]:
    valid = expl.token_ids >= 0
    units = torch.arange(expl.n_units).unsqueeze(1).expand_as(expl.token_ids)
    return units[valid], expl.token_ids[valid], int(valid.sum())


def predict(
    expl: Explanations, units: torch.Tensor, cur: torch.Tensor, pair: torch.Tensor, vocab: int
) -> torch.Tensor:
    """The simulated activation of `units` at tokens (cur, pair), all the same shape."""
    n_pairs = (vocab + 1) * vocab
    valid = expl.token_ids >= 0
    rows = torch.arange(expl.n_units).unsqueeze(1)
    token_hit, token_value = _sorted_lookup(
        (rows * vocab + expl.token_ids)[valid], expl.token_weights[valid], units * vocab + cur
    )
    valid = expl.pairs >= 0
    pair_hit, pair_value = _sorted_lookup(
        (rows * n_pairs + expl.pairs)[valid], expl.pair_weights[valid], units * n_pairs + pair
    )
    fallback = expl.rest[units]
    if expl.concept is not None and expl.concept_weight is not None and expl.member is not None:
        concept = expl.concept[units]
        inside = (concept >= 0) & expl.member[concept.clamp_min(0), cur]
        fallback = torch.where(inside, expl.concept_weight[units], fallback)
    prediction = torch.where(token_hit, token_value, fallback)
    return torch.where(pair_hit, pair_value, prediction)


def base_weight(expl: Explanations, vocab: int) -> torch.Tensor:
    """[D, Kb]: what each listed context would predict without its own entry (its token's weight
    if that token is listed, else the rest weight)."""
    units = torch.arange(expl.n_units).unsqueeze(1).expand_as(expl.pairs)
    cur = expl.pairs.clamp_min(0) % vocab
    prev_free = replace(
        expl, pairs=torch.full_like(expl.pairs[:, :0], -1), pair_weights=expl.pair_weights[:, :0]
    )
    return predict(prev_free, units, cur, cur, vocab)


def local_explanations(
    batches: Iterable[SparseBatch],
    split: Split,
    stats: SplitStats,
    n_features: int,
    n_tokens: int,
    n_contexts: int,
) -> tuple[Explanations, torch.Tensor]:
    """Each unit's explanation from the explanation split alone; also the scoring-split sums
    [D, Kb] of its listed contexts (from the same pass over the cache)."""
    vocab = split.vocab
    # Tokens: rank by sum² / count, the squared activation a token's mean accounts for.
    token_ids = torch.full((n_features, min(n_tokens, vocab)), -1, dtype=torch.long)
    token_weights = torch.zeros(token_ids.shape, dtype=torch.float64)
    listed_sum = torch.zeros(n_features, dtype=torch.float64)
    listed_count = torch.zeros(n_features, dtype=torch.float64)
    count = stats.explain_count.double()
    for start in range(0, n_features, CHUNK):
        sums = stats.explain_token_sum[:, start : start + CHUNK].T.double()  # [chunk, V]
        gain = torch.where(sums > 0, sums.square() / count.clamp_min(1), 0.0)
        top = torch.topk(gain, token_ids.shape[1], dim=1)
        keep = top.values > 0
        chosen_sum = torch.gather(sums, 1, top.indices)
        chosen_count = count[top.indices]
        token_ids[start : start + CHUNK] = torch.where(keep, top.indices, -1)
        token_weights[start : start + CHUNK] = torch.where(keep, chosen_sum / chosen_count.clamp_min(1), 0.0)
        listed_sum[start : start + CHUNK] = (chosen_sum * keep).sum(1)
        listed_count[start : start + CHUNK] = (chosen_count * keep).sum(1)
    explain_total = stats.explain_token_sum.sum(0).double()
    rest = (explain_total - listed_sum).clamp_min(0) / (stats.n_explain - listed_count).clamp_min(1)
    no_contexts = torch.full((n_features, 0), -1, dtype=torch.long)
    tokens_only = Explanations(token_ids, token_weights, no_contexts, no_contexts.double(), rest)
    if n_contexts == 0:
        return tokens_only, no_contexts.double()

    # Contexts: candidates are the pairs at each unit's top explanation-split positions.
    top_positions = stats.explain_top.positions
    kept = top_positions >= 0
    units = torch.arange(n_features).unsqueeze(1).expand_as(top_positions)[kept]
    candidate_pairs = split.pair[top_positions[kept]]
    keys = torch.unique(units * split.n_pairs + candidate_pairs)
    if keys.numel() == 0:  # no unit fired in the explanation split: no context to list (all -1 pads)
        pads = torch.full((n_features, n_contexts), -1, dtype=torch.long)
        zeros = torch.zeros(pads.shape, dtype=torch.float64)
        return Explanations(token_ids, token_weights, pads, zeros, rest), zeros
    units, candidate_pairs = keys // split.n_pairs, keys % split.n_pairs
    explain_sum, held_sum = pair_sums(batches, split, keys, n_features)
    explain_count, _ = pair_counts(split, candidate_pairs)
    mean = explain_sum / explain_count.clamp_min(1).double()
    base = predict(tokens_only, units, candidate_pairs % vocab, candidate_pairs, vocab)
    gain = explain_count.double() * (mean - base).square()
    # A context seen once says little; one that predicts what its token does adds nothing.
    useful = (explain_count >= 2) & ((mean - base).abs() > 1e-6 * torch.maximum(mean.abs(), base.abs()))
    chosen = GroupedTopK(n_features, n_contexts, floor=0.0)
    chosen.update(units[useful], gain[useful].float(), torch.arange(keys.numel())[useful])
    picked = chosen.positions  # [D, Kb] candidate index, -1 pads
    ok = picked >= 0
    index = picked.clamp_min(0)
    pairs = torch.where(ok, candidate_pairs[index], -1)
    pair_weights = torch.where(ok, mean[index], 0.0)
    held_pair_sum = torch.where(ok, held_sum[index], 0.0)
    # Least squares again: a token's weight (or the rest weight) is now the mean over the
    # positions no listed context claims.
    claimed_sum = torch.where(ok, explain_sum[index], 0.0)
    claimed_count = torch.where(ok, explain_count[index].double(), 0.0)
    same = (pairs % vocab).unsqueeze(2) == token_ids.unsqueeze(1)  # [D, Kb, Kt]
    same &= ok.unsqueeze(2) & (token_ids >= 0).unsqueeze(1)
    token_sum = token_weights * count[token_ids.clamp_min(0)] - (same * claimed_sum.unsqueeze(2)).sum(1)
    token_count = count[token_ids.clamp_min(0)] - (same * claimed_count.unsqueeze(2)).sum(1)
    unmatched = ok & ~same.any(2)
    rest_sum = (explain_total - listed_sum).clamp_min(0) - (claimed_sum * unmatched).sum(1)
    rest_count = stats.n_explain - listed_count - (claimed_count * unmatched).sum(1)
    rest = rest_sum.clamp_min(0) / rest_count.clamp_min(1)
    left = (token_ids >= 0) & (token_count > 0.5)
    token_ids = torch.where(left, token_ids, -1)
    token_weights = torch.where(left, token_sum / token_count.clamp_min(1), 0.0)
    return Explanations(token_ids, token_weights, pairs, pair_weights, rest), held_pair_sum


# ---------------------------------------------------------------------------- concepts

# Scripts by code point, and the UTF-8 lead bytes of their characters (a byte-level token may hold
# the first byte of a split character).
SCRIPTS: tuple[tuple[str, tuple[tuple[int, int], ...], range | None], ...] = (
    (
        "Arabic script",
        ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
        range(0xD8, 0xDC),
    ),
    ("Hebrew script", ((0x0590, 0x05FF), (0xFB1D, 0xFB4F)), range(0xD6, 0xD8)),
    ("Cyrillic script", ((0x0400, 0x052F),), range(0xD0, 0xD5)),
    ("Greek script", ((0x0370, 0x03FF), (0x1F00, 0x1FFF)), range(0xCD, 0xD0)),
    ("Devanagari script", ((0x0900, 0x097F),), None),
    ("Thai script", ((0x0E00, 0x0E7F),), None),
    ("Hangul", ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F)), range(0xEA, 0xEE)),
    (
        "CJK characters",
        ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x3040, 0x30FF), (0x3000, 0x303F)),
        range(0xE3, 0xEA),
    ),
)
CHARACTER_CLASSES = (
    "digits",
    "hexadecimal",
    "whitespace",
    "punctuation",
    "upper-case letters",
    "non-ASCII text",
)
CONCEPTS = tuple(name for name, _, _ in SCRIPTS) + CHARACTER_CLASSES  # most specific first
CONCEPT_SHARE = 0.5  # a unit's concept holds at least this share of its activation ...
CONCEPT_TOKENS = 3  # ... spread over at least this many of the class's tokens


def _in_script(raw: bytes, ranges: tuple[tuple[int, int], ...], leads: range | None) -> bool:
    text = "".join(raw.decode("utf-8", "ignore").split())
    lead_bytes = [b for b in raw if b >= 0xC0]
    if not text and not lead_bytes:
        return False
    chars_ok = all(any(low <= ord(ch) <= high for low, high in ranges) for ch in text)
    leads_ok = all(b in leads for b in lead_bytes) if leads is not None else not lead_bytes or bool(text)
    return chars_ok and leads_ok and (bool(text) or leads is not None)


def _in_class(raw: bytes, name: str) -> bool:
    import unicodedata

    text = raw.decode("utf-8", "ignore")
    stripped = "".join(text.split())
    if name == "whitespace":
        return bool(text) and not stripped and len(text) == len(raw)
    if name == "non-ASCII text":
        return any(b >= 0x80 for b in raw) and not any(ch.isascii() and ch.isalnum() for ch in stripped)
    if not stripped or len(stripped.encode()) != len(raw.strip()):  # a split character: not these
        return False
    if name == "digits":
        return all("0" <= ch <= "9" for ch in stripped)
    if name == "hexadecimal":
        return (
            all(ch in "0123456789abcdefABCDEF" for ch in stripped)
            and any(ch.isdigit() for ch in stripped)
            and any(ch.isalpha() for ch in stripped)
        )
    if name == "punctuation":
        return all(unicodedata.category(ch)[0] in "PS" for ch in stripped)
    if name == "upper-case letters":
        return (
            sum(ch.isalpha() for ch in stripped) >= 2
            and all(ch.isascii() and ch.isupper() for ch in stripped if ch.isalpha())
            and all(ch.isalpha() for ch in stripped)
        )
    raise ValueError(f"unknown character class {name!r}")


def token_classes(token_bytes: list[bytes]) -> torch.Tensor:
    """[C, V] bool: which tokens belong to each of `CONCEPTS` (scripts, then character classes)."""
    member = torch.zeros(len(CONCEPTS), len(token_bytes), dtype=torch.bool)
    for v, raw in enumerate(token_bytes):
        for c, (_, ranges, leads) in enumerate(SCRIPTS):
            member[c, v] = _in_script(raw, ranges, leads)
        for c, name in enumerate(CHARACTER_CLASSES, start=len(SCRIPTS)):
            member[c, v] = _in_class(raw, name)
    return member


def _listed(expl: Explanations, units: slice, vocab: int) -> torch.Tensor:
    """[chunk, V] bool: the tokens each unit's explanation lists."""
    ids = expl.token_ids[units]
    listed = torch.zeros(ids.shape[0], vocab + 1, dtype=torch.bool)
    listed.scatter_(1, torch.where(ids >= 0, ids, vocab), True)
    return listed[:, :vocab]


def concept_sums(
    expl: Explanations, count: torch.Tensor, token_sum: torch.Tensor, whole: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit, over the unlisted tokens of its concept (`whole`: every unlisted token): their
    occurrences (`count` [V]) and the unit's activation on them (`token_sum` [V, D]):
    ([D], [D]) float64; 0 without a concept."""
    assert expl.concept is not None and expl.member is not None  # nosec B101
    n, vocab = expl.n_units, count.numel()
    total_count, total_sum = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for start in range(0, n, CHUNK):
        units = slice(start, start + CHUNK)
        concept = expl.concept[units]
        inside = ~_listed(expl, units, vocab)
        if not whole:
            inside &= expl.member[concept.clamp_min(0)] & (concept >= 0).unsqueeze(1)
        total_count[units] = (inside * count.double()).sum(1)
        total_sum[units] = (inside * token_sum[:, units].T.double()).sum(1)
    return total_count, total_sum


def add_concepts(expl: Explanations, stats: SplitStats, member: torch.Tensor) -> Explanations:
    """Give each unit the first concept of `CONCEPTS` holding most of its explanation-split
    activation over several of its tokens ('Arabic script', 'digits', ...): then every unlisted token
    of that class predicts the class's mean activation there, and the rest weight is re-fitted on
    the tokens left. Units without such a concept keep their explanation."""
    n = expl.n_units
    concept = torch.full((n,), -1, dtype=torch.long)
    share_of = torch.zeros(n, dtype=torch.float64)
    count = stats.explain_count.double()
    member_f = member.double()
    for start in range(0, n, CHUNK):
        units = slice(start, start + CHUNK)
        sums = stats.explain_token_sum[:, units].T.double().clamp_min(0)  # [chunk, V]
        share = (sums @ member_f.T) / sums.sum(1, keepdim=True).clamp_min(1e-300)  # [chunk, C]
        spread = (sums > 0).double() @ member_f.T
        ok = (share >= CONCEPT_SHARE) & (spread >= CONCEPT_TOKENS)
        first = ok.double().argmax(1)  # the first (most specific) class that qualifies
        concept[units] = torch.where(ok.any(1), first, -1)
        share_of[units] = torch.where(ok.any(1), share.gather(1, first.unsqueeze(1)).squeeze(1), 0.0)
    with_concept = replace(expl, concept=concept, member=member, concept_names=CONCEPTS)
    count_c, sum_c = concept_sums(with_concept, count, stats.explain_token_sum)
    count_u, sum_u = concept_sums(with_concept, count, stats.explain_token_sum, whole=True)
    # Least squares on the explanation split: the class's mean, and the rest's without it (a
    # concept whose tokens are all listed names the unit but predicts nothing more).
    fitted = (concept >= 0) & (count_c > 0) & (count_u - count_c > 0)
    weight = torch.where(fitted, sum_c / count_c.clamp_min(1), expl.rest)
    rest = torch.where(fitted, (sum_u - sum_c).clamp_min(0) / (count_u - count_c).clamp_min(1), expl.rest)
    return replace(with_concept, concept_weight=weight, concept_share=share_of, rest=rest)


# ---------------------------------------------------------------------------- scores


def pearson(
    n: torch.Tensor,
    sp: torch.Tensor,
    spp: torch.Tensor,
    sa: torch.Tensor,
    saa: torch.Tensor,
    spa: torch.Tensor,
) -> torch.Tensor:
    """Correlation from (weighted) moments; NaN where either side is constant."""
    covariance = n * spa - sp * sa
    var_p, var_a = n * spp - sp.square(), n * saa - sa.square()
    scale = torch.maximum(n * spp, n * saa).clamp_min(1e-300)
    defined = (var_p > 1e-9 * scale) & (var_a > 1e-9 * scale) & (n > 1)
    r = covariance / (var_p.clamp_min(1e-300) * var_a.clamp_min(1e-300)).sqrt()
    return torch.where(defined, r.clamp(-1, 1), torch.nan)


@dataclass
class Moments:
    n: torch.Tensor
    sp: torch.Tensor
    spp: torch.Tensor
    sa: torch.Tensor
    saa: torch.Tensor
    spa: torch.Tensor

    def plus(self, other: Moments, weight: torch.Tensor) -> Moments:
        return Moments(*(a + weight * b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[torch.Tensor, ...]:
        return (self.n, self.sp, self.spp, self.sa, self.saa, self.spa)

    def correlation(self) -> torch.Tensor:
        return pearson(*self.astuple())


def held_moments(
    expl: Explanations,
    split: Split,
    stats: SplitStats,
    total_token_sum: torch.Tensor,
    held_pair_sum: torch.Tensor,
) -> Moments:
    """Moments of (prediction, activation) over every scoring-split token, from the sums alone:
    each listed token and context shifts the rest weight's moments by its own."""
    vocab, n_units = split.vocab, expl.n_units
    rest = expl.rest
    n_held = float(stats.n_held)
    sp, spp, spa = rest * n_held, rest.square() * n_held, rest * stats.held_sum
    if expl.concept is not None and expl.concept_weight is not None:
        # The concept: unlisted tokens of its class predict its weight instead of the rest weight.
        count_c, activation_c = concept_sums(
            expl, stats.held_count, total_token_sum - stats.explain_token_sum
        )
        shift = expl.concept_weight - rest
        sp = sp + shift * count_c
        spp = spp + (expl.concept_weight.square() - rest.square()) * count_c
        spa = spa + shift * activation_c
    # Tokens: held count and held activation sum of each listed (unit, token).
    valid = expl.token_ids >= 0
    ids = expl.token_ids.clamp_min(0)
    count = torch.where(valid, stats.held_count[ids].double(), 0.0)
    rows = torch.arange(n_units).unsqueeze(1).expand_as(ids)
    activation = torch.where(
        valid, (total_token_sum[ids, rows] - stats.explain_token_sum[ids, rows]).double().clamp_min(0), 0.0
    )
    shift = expl.token_weights - rest.unsqueeze(1)
    sp = sp + (shift * count).sum(1)
    spp = spp + ((expl.token_weights.square() - rest.square().unsqueeze(1)) * count).sum(1)
    spa = spa + (shift * activation).sum(1)
    # Contexts: the same, relative to what their token would have predicted.
    if expl.pairs.numel():
        ok = expl.pairs >= 0
        _, held_count = pair_counts(split, expl.pairs.clamp_min(0).reshape(-1))
        pair_count = torch.where(ok, held_count.view(expl.pairs.shape).double(), 0.0)
        base = base_weight(expl, vocab)
        shift = torch.where(ok, expl.pair_weights - base, 0.0)
        sp = sp + (shift * pair_count).sum(1)
        spp = spp + (torch.where(ok, expl.pair_weights.square() - base.square(), 0.0) * pair_count).sum(1)
        spa = spa + (shift * held_pair_sum).sum(1)
    n = torch.full((n_units,), n_held, dtype=torch.float64)
    return Moments(n, sp, spp, stats.held_sum.clone(), stats.held_square.clone(), spa)


def window_moments(
    expl: Explanations,
    split: Split,
    units: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    activations: torch.Tensor,
) -> Moments:
    """Moments over the scoring-split tokens of example windows ([E] units, [E, width] positions,
    mask and activations), per unit."""
    keep = valid & split.held[positions.clamp(0, split.held.numel() - 1)]
    at = positions[keep]
    unit = units.unsqueeze(1).expand_as(positions)[keep]
    p = predict(expl, unit, split.cur[at], split.pair[at], split.vocab)
    a = activations[keep].double()
    moments = []
    for value in (torch.ones_like(p), p, p.square(), a, a.square(), p * a):
        moments.append(torch.zeros(expl.n_units, dtype=torch.float64).index_add_(0, unit, value))
    return Moments(*moments)


def logit_scores(
    next_sum: torch.Tensor, decoder: torch.Tensor, logit_weights: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit: the activation-weighted mean percentile of the actual next token among its direct
    logit effects (0.5 = chance), and the weighted share of next tokens among its top-k ([D], [D];
    NaN for a unit that never fired on the scoring split)."""
    n_units, vocab = decoder.shape[0], logit_weights.shape[1]
    percentile_score = torch.full((n_units,), torch.nan, dtype=torch.float64)
    top_fraction = torch.full((n_units,), torch.nan, dtype=torch.float64)
    k = min(k, vocab)
    for start in range(0, n_units, CHUNK):
        effect = decoder[start : start + CHUNK].float() @ logit_weights.float()  # [chunk, V]
        weights = next_sum[:, start : start + CHUNK].T.double()  # [chunk, V]
        total = weights.sum(1)
        rank = torch.empty_like(effect).scatter_(
            1, effect.argsort(1), torch.arange(vocab, dtype=effect.dtype).expand_as(effect).contiguous()
        )
        percentile = rank.double() / max(vocab - 1, 1)
        top = torch.gather(weights, 1, torch.topk(effect, k, dim=1).indices).sum(1)
        fired = total > 0
        chunk = slice(start, start + effect.shape[0])
        percentile_score[chunk] = torch.where(
            fired, (weights * percentile).sum(1) / total.clamp_min(1e-300), torch.nan
        )
        top_fraction[chunk] = torch.where(fired, top / total.clamp_min(1e-300), torch.nan)
    return percentile_score, top_fraction


RANDOM_MODELS = 5  # re-initialisations the chance level is averaged over


def logit_baselines(
    next_sum: torch.Tensor,
    decoder: torch.Tensor,
    logit_weights: torch.Tensor,
    random_logit_weights: Sequence[torch.Tensor],
    k: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The logit score's chance level, measured rather than assumed: the median logit score of the
    same units against the same next tokens (i) through randomised models' direct paths (the
    weights re-initialised; the paper's 0.5 "randomised model"): "random_model" the mean of their
    medians, "random_model_medians" each; (ii) with random unit directions in place of the units'
    decoder vectors, through this model ("random_directions"). A dictionary's decoder vectors share
    a direction (MLP activations are non-negative), so one re-initialisation ranks the frequent
    next tokens alike for every feature: its median strays from 0.5 by chance, hence several."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(decoder.shape, generator=generator), dim=1)
    random_directions = _median(logit_scores(next_sum, directions, logit_weights, k)[0])
    medians = [_median(logit_scores(next_sum, decoder, weights, k)[0]) for weights in random_logit_weights]
    defined = [m for m in medians if m is not None]
    return {
        "random_model": sum(defined) / len(defined) if defined else None,
        "random_model_medians": medians,
        "random_directions": random_directions,
    }


def randomised_logit_weights(model: Any, seed: int = 0) -> torch.Tensor | None:
    """[d_mlp, vocab] direct logit weights of a freshly initialised copy of our one-layer model
    (same config, seed `seed`); None for a model we cannot re-initialise."""
    from trainer.lm.model import OneLayerTransformer

    if not isinstance(model, OneLayerTransformer):
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = OneLayerTransformer(model.cfg)
    return fresh.direct_logit_weights().detach().float()


# ---------------------------------------------------------------------------- rows


def _quoted(token_id: int, texts: list[str], vocab: int) -> str:
    if token_id >= vocab:
        return "⟨start⟩"
    return f'"{display_token(texts[token_id])}"' if 0 <= token_id < len(texts) else f"#{token_id}"


def describe(
    token_ids: list[int],
    token_weights: list[float],
    pairs: list[int],
    pair_weights: list[float],
    rest: float,
    texts: list[str],
    vocab: int,
    concept: dict[str, Any] | None = None,
) -> str:
    """One line a person can read, e.g. '"·the" 2.3, "·a" 1.1; after "·of": "·the" 4.1; else 0.01',
    led by its concept if it has one ('Arabic script (84% of its activation), 1.9 per token; …')."""
    if not token_ids and not pairs and concept is None:
        return "never fired on the explanation split" if rest == 0 else f"about {rest:.3g} everywhere"
    parts = []
    if concept is not None:
        parts.append(
            f"{concept['name']} ({concept['share']:.0%} of its activation), {concept['weight']:.3g} per token"
        )
    shown = [f"{_quoted(t, texts, vocab)} {w:.3g}" for t, w in zip(token_ids, token_weights, strict=True)][
        :SHOWN_TOKENS
    ]
    if shown:
        parts.append(", ".join(shown) + (" …" if len(token_ids) > SHOWN_TOKENS else ""))
    for pair, weight in list(zip(pairs, pair_weights, strict=True))[:SHOWN_CONTEXTS]:
        prev, cur = divmod(pair, vocab)
        parts.append(f"after {_quoted(prev, texts, vocab)}: {_quoted(cur, texts, vocab)} {weight:.3g}")
    parts.append(f"else {rest:.2g}")
    return "; ".join(parts)


def rules_of(expl: Explanations, unit: int, vocab: int) -> dict[str, Any]:
    """The JSON layout of `Interpretation.rules`."""
    tokens = [
        {"token_id": int(t), "weight": float(w)}
        for t, w in zip(expl.token_ids[unit].tolist(), expl.token_weights[unit].tolist(), strict=True)
        if t >= 0
    ]
    contexts = []
    for pair, weight in zip(expl.pairs[unit].tolist(), expl.pair_weights[unit].tolist(), strict=True):
        if pair < 0:
            continue
        prev, cur = divmod(int(pair), vocab)
        contexts.append(
            {"previous_id": None if prev >= vocab else prev, "token_id": cur, "weight": float(weight)}
        )
    concept = None
    if expl.concept is not None and int(expl.concept[unit]) >= 0:
        assert expl.concept_weight is not None and expl.concept_share is not None  # nosec B101
        concept = {
            "name": expl.concept_names[int(expl.concept[unit])],
            "weight": float(expl.concept_weight[unit]),
            "share": float(expl.concept_share[unit]),
        }
    return {"tokens": tokens, "contexts": contexts, "rest": float(expl.rest[unit]), "concept": concept}


def _finite(value: float) -> float | None:
    return None if value != value else float(value)  # NaN -> None


def interpretation_rows(
    expl: Explanations,
    explainer: str,
    scores: dict[str, torch.Tensor],
    texts: list[str],
    vocab: int,
    explanations: list[str] | None = None,
    units: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Rows of the Interpretation table (no run_id) for `units` (default: all)."""
    rows = []
    columns = {name: values.tolist() for name, values in scores.items()}
    for unit in units if units is not None else range(expl.n_units):
        rules = rules_of(expl, unit, vocab)
        text = (
            explanations[unit]
            if explanations is not None
            else describe(
                [t["token_id"] for t in rules["tokens"]],
                [t["weight"] for t in rules["tokens"]],
                [p for p in expl.pairs[unit].tolist() if p >= 0],
                [
                    w
                    for p, w in zip(expl.pairs[unit].tolist(), expl.pair_weights[unit].tolist(), strict=True)
                    if p >= 0
                ],
                rules["rest"],
                texts,
                vocab,
                rules["concept"],
            )
        )
        rows.append(
            {
                "feature_index": unit,
                "explainer": explainer,
                "explanation": text,
                "rules": rules,
                **{name: _finite(values[unit]) for name, values in columns.items()},
            }
        )
    return rows


# ---------------------------------------------------------------------------- the whole step


@dataclass
class InterpretabilityResult:
    rows: list[dict[str, Any]]  # Interpretation rows (no run_id)
    summary: dict[str, Any]  # medians and counts, for Run.metrics["interpretability"]


def _median(values: torch.Tensor) -> float | None:
    finite = values[~values.isnan()]
    return float(finite.median()) if finite.numel() else None


def score_explanations(
    expl: Explanations,
    split: Split,
    stats: SplitStats,
    total_token_sum: torch.Tensor,
    held_pair_sum: torch.Tensor,
    top: Windows,
) -> dict[str, torch.Tensor]:
    """`score` (every scoring token) and `score_top_random` (top scoring windows + equal weight of
    random scoring text) of each explanation."""
    everywhere = held_moments(expl, split, stats, total_token_sum, held_pair_sum)
    in_top = window_moments(expl, split, top.features, top.positions, top.valid, top.activations)
    weight = in_top.n / max(stats.n_held, 1)
    top_random = in_top.plus(everywhere, weight).correlation()
    return {
        "score": everywhere.correlation(),
        "score_top_random": torch.where(in_top.n > 0, top_random, torch.nan),
    }


def _evidence(
    expl: Explanations, stats: SplitStats, tokens: np.ndarray, texts: list[str], vocab: int
) -> Callable[[int], Evidence]:
    def build(unit: int) -> Evidence:
        def text(token_id: int) -> str:
            return texts[token_id] if 0 <= token_id < len(texts) else ""

        token_list = [
            (text(t), w)
            for t, w in zip(expl.token_ids[unit].tolist(), expl.token_weights[unit].tolist(), strict=True)
            if t >= 0
        ]
        contexts = []
        for pair, w in zip(expl.pairs[unit].tolist(), expl.pair_weights[unit].tolist(), strict=True):
            if pair >= 0:
                prev, cur = divmod(pair, vocab)
                contexts.append(("" if prev >= vocab else text(prev), text(cur), w))
        windows: list[tuple[str, str, str, float]] = []
        for position, value in zip(
            stats.explain_top.positions[unit].tolist(), stats.explain_top.scores[unit].tolist(), strict=True
        ):
            if position < 0 or len(windows) >= 5:
                continue
            before = "".join(text(int(t)) for t in tokens[max(0, position - 12) : position])
            after = "".join(text(int(t)) for t in tokens[position + 1 : position + 4])
            windows.append((before, text(int(tokens[position])), after, value))
        return Evidence(token_list, contexts, windows)

    return build


def _llm_explanations(rules: dict[int, LLMRules], n_units: int, vocab: int) -> Explanations:
    width_t = max([len(r.tokens) for r in rules.values()] + [0])
    width_b = max([len(r.contexts) for r in rules.values()] + [0])
    token_ids = torch.full((n_units, width_t), -1, dtype=torch.long)
    token_weights = torch.zeros(n_units, width_t, dtype=torch.float64)
    pairs = torch.full((n_units, width_b), -1, dtype=torch.long)
    pair_weights = torch.zeros(n_units, width_b, dtype=torch.float64)
    for unit, rule in rules.items():
        for j, (token_id, w) in enumerate(rule.tokens):
            token_ids[unit, j], token_weights[unit, j] = token_id, w
        for j, (prev, cur, w) in enumerate(rule.contexts):
            pairs[unit, j] = (vocab if prev is None else prev) * vocab + cur
            pair_weights[unit, j] = w
    return Explanations(
        token_ids, token_weights, pairs, pair_weights, torch.zeros(n_units, dtype=torch.float64)
    )


def interpret_units(
    batches: Iterable[SparseBatch],
    tokens: np.ndarray,
    n_ctx: int,
    vocab: int,
    total_token_sum: torch.Tensor,
    top: Windows,
    decoder: torch.Tensor,
    logit_weights: torch.Tensor,
    cfg: AnalysisConfig,
    texts: list[str],
    log: Callable[[str], None] = print,
    random_logit_weights: Sequence[torch.Tensor] = (),
    token_bytes: list[bytes] | None = None,
) -> InterpretabilityResult:
    """Explain, simulate and score every unit of an analysed stream (`batches`: the re-iterable
    sparse cache; `total_token_sum` [V, D] the activation summed per input token over the whole
    stream; `top` each unit's top example windows with their activations; `random_logit_weights`
    randomised models' direct logit weights, for the measured chance level; `token_bytes` each
    token's bytes, for its script and character classes: without them, no concepts)."""
    n_units = decoder.shape[0]
    split = split_stream(tokens, n_ctx, vocab)
    stats = split_pass(batches, split, n_units, cfg.explain_candidates)
    expl, held_pair_sum = local_explanations(
        batches, split, stats, n_units, cfg.explain_tokens, cfg.explain_contexts
    )
    # Concepts, not only tokens: a script or character class holding most of a unit's activation.
    if token_bytes is not None and len(token_bytes) >= vocab:
        expl = add_concepts(expl, stats, token_classes(token_bytes[:vocab]))
    scores = score_explanations(expl, split, stats, total_token_sum, held_pair_sum, top)
    logit_score, logit_top = logit_scores(stats.next_sum, decoder, logit_weights, cfg.n_logit_tokens)
    logit = {"logit_score": logit_score, "logit_top_fraction": logit_top}
    rows = interpretation_rows(expl, "local", {**scores, **logit}, texts, vocab)
    summary: dict[str, Any] = {
        "explainer": "local",
        "n_units": n_units,
        "n_scored": int((~scores["score"].isnan()).sum()),
        "median_score": _median(scores["score"]),
        "median_score_top_random": _median(scores["score_top_random"]),
        "median_logit_score": _median(logit_score),
        "median_logit_top_fraction": _median(logit_top),
        "explanation_tokens": stats.n_explain,
        "scoring_tokens": stats.n_held,
        # 95% bootstrap intervals of the medians over units (the headline: top + random).
        "ci": {
            name: bootstrap_median(values.numpy())["ci"]
            for name, values in (
                ("score_top_random", scores["score_top_random"]),
                ("score", scores["score"]),
                ("logit_score", logit_score),
            )
        },
    }
    baselines = logit_baselines(
        stats.next_sum, decoder, logit_weights, random_logit_weights, cfg.n_logit_tokens
    )
    summary["baseline_logit_score"] = (
        baselines["random_model"] if baselines["random_model"] is not None else baselines["random_directions"]
    )
    summary["baseline_logit_scores"] = baselines

    endpoint = LLMEndpoint.from_settings(cfg.llm_url, cfg.llm_model, cfg.llm_timeout, cfg.llm_retries)
    if endpoint is not None:
        alive = [u for u in range(n_units) if expl.rest[u] > 0 or bool((expl.token_ids[u] >= 0).any())]
        units = alive[: cfg.llm_max_units] if cfg.llm_max_units > 0 else alive
        ids: dict[str, int] = {}
        for token_id, text in enumerate(texts[:vocab]):
            ids.setdefault(text, token_id)
        llm = explain_units(endpoint, units, _evidence(expl, stats, tokens, texts, vocab), ids)
        log(llm.summary(endpoint))
        if llm.rules:
            llm_expl = _llm_explanations(llm.rules, n_units, vocab)
            ok = llm_expl.pairs >= 0
            keys = torch.arange(n_units).unsqueeze(1) * split.n_pairs + llm_expl.pairs
            unique = torch.unique(keys[ok])
            _, held = pair_sums(batches, split, unique, n_units)
            found = torch.searchsorted(unique, keys.clamp_min(0)).clamp_max(max(unique.numel() - 1, 0))
            llm_held = torch.where(ok, held[found] if unique.numel() else 0.0, 0.0)
            llm_scores = score_explanations(llm_expl, split, stats, total_token_sum, llm_held, top)
            explained = sorted(llm.rules)
            texts_of = {u: llm.rules[u].explanation for u in explained}
            rows += interpretation_rows(
                llm_expl,
                "llm",
                {**llm_scores, **logit},
                texts,
                vocab,
                explanations=[texts_of.get(u, "") for u in range(n_units)],
                units=explained,
            )
            for row in rows[-len(explained) :]:
                row["rules"]["model"] = endpoint.model
            summary["llm"] = {
                "model": endpoint.model,
                "n_explained": len(explained),
                "n_failed": len(llm.errors),
                "median_score": _median(llm_scores["score"][explained]),
                "median_score_top_random": _median(llm_scores["score_top_random"][explained]),
            }
        else:
            summary["llm"] = {"model": endpoint.model, "n_explained": 0, "n_failed": len(llm.errors)}
        if llm.errors:
            summary["llm"]["first_error"] = next(iter(llm.errors.values()))
    return InterpretabilityResult(rows, summary)
