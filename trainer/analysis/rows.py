"""Database rows of an analysed run: examples, features, the token search index, the density histogram."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from trainer.analysis.features import auto_label, logit_effects, nearest_neighbours, token_index, top_tokens
from trainer.analysis.stats import FirstPass, SecondPass, Windows, make_windows, window_token_ids
from trainer.config import AnalysisConfig
from trainer.store.schema import pack_activations, pack_token_ids

FP16_MAX = 65504.0


# ---------------------------------------------------------------------------- examples


def windows_of(positions: torch.Tensor, n_bands: int | None, n_tokens: int, cfg: AnalysisConfig) -> Windows:
    """Windows of every kept slot of a GroupedTopK's positions [G, k]: group g is feature g, or
    with bands, feature g // n_bands and band g % n_bands."""
    group, _slot = (positions >= 0).nonzero(as_tuple=True)
    focus = positions[positions >= 0]
    features = group if n_bands is None else group // n_bands
    bands = torch.full_like(group, -1) if n_bands is None else group % n_bands
    return make_windows(features, bands, focus, n_tokens, cfg.context_before, cfg.context_after)


def concat_windows(a: Windows, b: Windows) -> Windows:
    return Windows(
        *(
            torch.cat([x, y])
            for x, y in zip(
                (a.features, a.bands, a.focus, a.start, a.valid, a.activations),
                (b.features, b.bands, b.focus, b.start, b.valid, b.activations),
                strict=True,
            )
        )
    )


def example_rows(
    windows: Windows, tokens: np.ndarray, cfg: AnalysisConfig, n_top: int
) -> list[dict[str, Any]]:
    ids = window_token_ids(windows, tokens)
    acts = windows.activations.clamp(max=FP16_MAX).numpy()
    valid = windows.valid.numpy()
    features = windows.features.tolist()
    focus = windows.focus.tolist()
    offsets = (windows.focus - windows.start).tolist()
    focus_acts = acts[np.arange(len(focus)), offsets] if focus else np.zeros(0)
    bands = [None if b < 0 else b for b in windows.bands.tolist()]
    # Rank: top examples in the order kept (descending activation, then position); interval
    # samples by descending activation within their band.
    order = sorted(
        range(len(focus)), key=lambda e: (e >= n_top, features[e], bands[e] or 0, -focus_acts[e], focus[e])
    )
    rows: list[dict[str, Any]] = []
    rank, previous = 0, None
    for e in order:
        key = (e >= n_top, features[e], bands[e])
        rank = rank + 1 if key == previous else 0
        previous = key
        rows.append(
            {
                "feature_index": features[e],
                "kind": "interval" if e >= n_top else "top",
                "band": bands[e],
                "rank": rank,
                "max_activation": float(focus_acts[e]),
                "focus_position": offsets[e],
                "token_ids": pack_token_ids(ids[e][valid[e]]),
                "activations": pack_activations(acts[e][valid[e]]),
                "source_position": focus[e],
            }
        )
    return rows


# ---------------------------------------------------------------------------- features


def feature_rows(
    logit_weights: torch.Tensor,
    decoder: torch.Tensor,
    neighbour_vectors: torch.Tensor,
    stats: FirstPass,
    second: SecondPass,
    texts: list[str],
    cfg: AnalysisConfig,
) -> list[dict[str, Any]]:
    n_tokens = stats.n_tokens
    count = stats.fire_count
    density = (count.double() / n_tokens).tolist()
    maximum = stats.max_activation
    mean = (stats.activation_sum / count.clamp_min(1).double()).tolist()
    logits = logit_effects(decoder, logit_weights, cfg.n_logit_tokens, cfg.histogram_bins)
    neighbour_ids, neighbour_cos = nearest_neighbours(neighbour_vectors, cfg.n_neighbours)
    tok_ids, tok_counts = top_tokens(stats.token_fire_count, cfg.n_top_tokens)
    tok_sums = torch.gather(stats.token_activation_sum.T, 1, tok_ids) if tok_ids.numel() else tok_ids.float()
    hist_fraction = torch.linspace(0, 1, cfg.histogram_bins + 1)
    band_fraction = torch.linspace(0, 1, cfg.n_intervals + 1)
    rows = []
    for i in range(decoder.shape[0]):
        kept = [
            (int(t), int(c), float(s))
            for t, c, s in zip(tok_ids[i].tolist(), tok_counts[i].tolist(), tok_sums[i].tolist(), strict=True)
            if c > 0
        ]
        top = [{"token_id": t, "count": c, "mean_activation": s / c} for t, c, s in kept]
        rows.append(
            {
                "index": i,
                "density": density[i],
                "max_activation": float(maximum[i]),
                "mean_activation": mean[i],
                "label": auto_label(
                    [texts[t] for t, _, _ in kept], [c for _, c, _ in kept], int(count[i]), n_tokens
                ),
                "label_source": "auto",
                "activation_histogram": {
                    "edges": (hist_fraction * maximum[i]).tolist(),
                    "counts": second.histogram[i].tolist(),
                },
                "band_edges": (band_fraction * maximum[i]).tolist(),
                "top_tokens": top,
                "logit_positive": [
                    {"token_id": int(t), "value": float(v)}
                    for t, v in zip(
                        logits.positive_ids[i].tolist(), logits.positive_values[i].tolist(), strict=True
                    )
                ],
                "logit_negative": [
                    {"token_id": int(t), "value": float(v)}
                    for t, v in zip(
                        logits.negative_ids[i].tolist(), logits.negative_values[i].tolist(), strict=True
                    )
                ],
                "logit_histogram": {
                    "edges": logits.histogram_edges[i].tolist(),
                    "counts": logits.histogram_counts[i].tolist(),
                },
                "neighbours": [
                    {"index": int(j), "cosine": float(c)}
                    for j, c in zip(neighbour_ids[i].tolist(), neighbour_cos[i].tolist(), strict=True)
                ],
            }
        )
    return rows


def token_feature_rows(stats: FirstPass, n: int) -> list[dict[str, Any]]:
    features, means = token_index(
        stats.token_fire_count, stats.token_activation_sum, stats.token_occurrences, n
    )
    rows = []
    for token_id, rank in (means > -torch.inf).nonzero().tolist():
        feature = int(features[token_id, rank])
        rows.append(
            {
                "token_id": token_id,
                "rank": rank,
                "feature_index": feature,
                "mean_activation": float(means[token_id, rank]),
                "count": int(stats.token_fire_count[token_id, feature]),
            }
        )
    return rows


def density_histogram(density: torch.Tensor, n_tokens: int, bins: int = 50) -> dict[str, Any]:
    """Log10 feature density of the features that fired; dead ones are counted in n_zero."""
    alive = density[density > 0]
    low = math.floor(math.log10(1.0 / n_tokens))
    edges = torch.linspace(low, 0.0, bins + 1, dtype=torch.float64)
    counts = torch.histc(alive.log10(), bins=bins, min=low, max=0.0) if alive.numel() else torch.zeros(bins)
    return {
        "edges": edges.tolist(),
        "counts": [int(c) for c in counts.tolist()],
        "n_zero": int((density == 0).sum()),
    }
