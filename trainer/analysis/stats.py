"""Per-feature statistics of the analysis stream, accumulated batch by batch from sparse activations.

Pass 1 (while encoding): firing counts and sums, exact top-k examples, per-(token, feature)
counts and sums. Pass 2 (from the cache, once each feature's maximum is known): the activation
histogram and the interval-sample reservoirs. Pass 3: every example window's activations.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from trainer.analysis.stream import GroupedTopK, SparseBatch


@dataclass
class FirstPass:
    n_tokens: int
    fire_count: torch.Tensor  # [D] int64: tokens where the feature is > 0
    activation_sum: torch.Tensor  # [D] float64, over those tokens
    top: GroupedTopK  # per feature: scores = activations, sorted descending
    token_occurrences: torch.Tensor  # [V] int64
    token_fire_count: torch.Tensor  # [V, D] int32
    token_activation_sum: torch.Tensor  # [V, D] float32

    @property
    def max_activation(self) -> torch.Tensor:
        return self.top.scores[:, 0].clamp_min(0)


class FirstPassAccumulator:
    def __init__(self, n_features: int, vocab_size: int, n_top: int) -> None:
        self.n_features, self.vocab_size = n_features, vocab_size
        self.result = FirstPass(
            n_tokens=0,
            fire_count=torch.zeros(n_features, dtype=torch.long),
            activation_sum=torch.zeros(n_features, dtype=torch.float64),
            top=GroupedTopK(n_features, n_top, floor=0.0),
            token_occurrences=torch.zeros(vocab_size, dtype=torch.long),
            token_fire_count=torch.zeros(vocab_size, n_features, dtype=torch.int32),
            token_activation_sum=torch.zeros(vocab_size, n_features, dtype=torch.float32),
        )

    def add(self, batch: SparseBatch, token_ids: torch.Tensor) -> None:
        r = self.result
        r.n_tokens += batch.n_tokens
        r.token_occurrences += torch.bincount(token_ids, minlength=self.vocab_size)
        r.fire_count += torch.bincount(batch.cols, minlength=self.n_features)
        r.activation_sum.index_add_(0, batch.cols, batch.values.double())
        # Flat [V * D] keys: one scatter over the nonzero entries only.
        key = token_ids[batch.rows] * self.n_features + batch.cols
        r.token_fire_count.view(-1).index_add_(0, key, torch.ones_like(key, dtype=torch.int32))
        r.token_activation_sum.view(-1).index_add_(0, key, batch.values)
        mask = r.top.candidates(batch.cols, batch.values)
        r.top.update(batch.cols[mask], batch.values[mask], batch.positions[mask])


@dataclass
class SecondPass:
    histogram: torch.Tensor  # [D, histogram_bins] int64, linear bins over [0, max]
    intervals: GroupedTopK  # group = feature * n_intervals + band; scores = random priorities


def band_of(values: torch.Tensor, max_activation: torch.Tensor, n_bands: int) -> torch.Tensor:
    """Index of the linear band of [0, max] holding each value (the top edge belongs to the last)."""
    scale = n_bands / max_activation.clamp_min(torch.finfo(torch.float32).tiny)
    return (values * scale).long().clamp_(0, n_bands - 1)


def second_pass(
    batches: Iterable[SparseBatch],
    max_activation: torch.Tensor,
    histogram_bins: int,
    n_intervals: int,
    per_interval: int,
    seed: int,
) -> SecondPass:
    """Histograms, and per (feature, band) a uniform random sample of `per_interval` tokens:
    every entry gets an i.i.d. random priority and each group keeps its top priorities."""
    n_features = max_activation.numel()
    histogram = torch.zeros(n_features * histogram_bins, dtype=torch.long)
    intervals = GroupedTopK(n_features * n_intervals, per_interval, floor=-1.0)
    generator = torch.Generator().manual_seed(seed)
    maximum = max_activation.float()
    for batch in batches:
        feature_max = maximum[batch.cols]
        bins = band_of(batch.values, feature_max, histogram_bins)
        histogram.index_add_(0, batch.cols * histogram_bins + bins, torch.ones_like(bins))
        groups = batch.cols * n_intervals + band_of(batch.values, feature_max, n_intervals)
        priorities = torch.rand(batch.values.numel(), generator=generator)
        mask = intervals.candidates(groups, priorities)
        intervals.update(groups[mask], priorities[mask], batch.positions[mask])
    return SecondPass(histogram.view(n_features, histogram_bins), intervals)


@dataclass
class Windows:
    """Context windows around focus positions: padded [E, width] arrays, `valid` marks real tokens."""

    features: torch.Tensor  # [E]
    bands: torch.Tensor  # [E] interval band, -1 for none
    focus: torch.Tensor  # [E] stream position of the focus token
    start: torch.Tensor  # [E] stream position of the window's first token
    valid: torch.Tensor  # [E, width] bool
    activations: torch.Tensor  # [E, width] float32 (filled by `fill_window_activations`)

    @property
    def positions(self) -> torch.Tensor:
        return self.start.unsqueeze(1) + torch.arange(self.valid.shape[1])

    def head(self, n: int) -> Windows:
        """The first n windows."""
        return Windows(
            self.features[:n],
            self.bands[:n],
            self.focus[:n],
            self.start[:n],
            self.valid[:n],
            self.activations[:n],
        )


def make_windows(
    features: torch.Tensor, bands: torch.Tensor, focus: torch.Tensor, n_tokens: int, before: int, after: int
) -> Windows:
    start = (focus - before).clamp_min(0)
    end = (focus + after + 1).clamp_max(n_tokens)
    width = before + after + 1
    valid = start.unsqueeze(1) + torch.arange(width) < end.unsqueeze(1)
    return Windows(features, bands, focus, start, valid, torch.zeros(valid.shape))


def fill_window_activations(windows: Windows, batches: Iterable[SparseBatch], n_features: int) -> None:
    """Look every (window token, feature) up in the cached stream: exactly the streamed values."""
    keys = (windows.positions * n_features + windows.features.unsqueeze(1))[windows.valid]
    unique_keys, inverse = torch.unique(keys, return_inverse=True)  # sorted
    values = torch.zeros(unique_keys.numel())
    for batch in batches:
        # Batch keys are ascending: sparse entries are stored row-major.
        batch_keys = batch.positions * n_features + batch.cols
        bounds = torch.tensor([batch.start, batch.start + batch.n_tokens]) * n_features
        lo, hi = torch.searchsorted(unique_keys, bounds).tolist()
        if lo == hi or batch_keys.numel() == 0:
            continue
        wanted = unique_keys[lo:hi]
        found = torch.searchsorted(batch_keys, wanted).clamp_max(batch_keys.numel() - 1)
        hit = batch_keys[found] == wanted
        values[lo:hi][hit] = batch.values[found[hit]]
    windows.activations[windows.valid] = values[inverse]


def window_token_ids(windows: Windows, tokens: np.ndarray) -> np.ndarray:
    positions = windows.positions.clamp_max(len(tokens) - 1).numpy()
    return np.asarray(tokens[positions.reshape(-1)], dtype=np.int64).reshape(positions.shape)


def iter_rows(n: int, chunk: int) -> Iterator[slice]:
    for i in range(0, n, chunk):
        yield slice(i, min(n, i + chunk))
