"""The paper's detailed case studies ("Detailed investigations" of Bricken et al. 2023): for each
concept proxy (trainer/analysis/proxies.py), the feature and the neuron that best track it on
held-out text, how specific and how sensitive each is, and what pinning each does to the text the
model writes.

Which unit "tracks" a proxy: the highest Pearson correlation, over every held-out token, between
the unit's activation and the proxy's label (1 on proxy-positive tokens, else 0). It uses the
activation magnitudes the paper's histograms show and needs no firing threshold; it falls when a
unit fires off the concept (specificity) and when it stays silent on it (sensitivity), so neither
a unit that fires everywhere nor one that fires on a few of the concept's tokens wins.

Measures of a unit a[t] against positives P (the payload layout is in trainer/store/schema.py):
- specificity: Σ_{t∈P} a[t] / Σ_t a[t], the share of its activation mass on the concept; also, per
  threshold fraction φ, the share of its firings a > φ·max a that fall on the concept;
- sensitivity: |{t ∈ P : a[t] > 0}| / |P|, the share of the concept's tokens where it fires;
- the histogram of its nonzero activations, split into proxy-positive and -negative tokens.
Two passes over the tokens: correlations for every unit (the SAE's activations kept sparse on disk,
trainer/analysis/stream.py), then the chosen units' activations (features from that cache, neurons
from a second run of the model, which costs a fraction of the SAE's encode).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer.analysis.proxies import POSITIVE_SCORE, Proxy, TokenText, decode_tokens
from trainer.analysis.stream import Encode, SparseCache, autocast_context, sparsify
from trainer.config import CaseStudyConfig
from trainer.lm.hooks import HookedLM
from trainer.lm.steering import greedy_tokens, pin_feature, pin_neuron

Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------- measures


def unit_measures(
    activations: np.ndarray, positive: np.ndarray, fractions: Sequence[float], bins: int
) -> dict[str, Any]:
    """Specificity, sensitivity, threshold shares and the coloured histogram of one unit's
    activations [T] against the proxy-positive mask [T]. Shares with nothing to divide are None."""
    acts = np.asarray(activations, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    firing = acts > 0
    n_positive, mass = int(positive.sum()), float(acts[firing].sum())
    top = float(acts.max()) if acts.size else 0.0
    thresholds = []
    for fraction in fractions:
        above = acts > fraction * top if top > 0 else np.zeros_like(firing)
        n_above = int(above.sum())
        thresholds.append(
            {
                "fraction": float(fraction),
                "threshold": float(fraction * top),
                "n_firing": n_above,
                "share": int((above & positive).sum()) / n_above if n_above else None,
            }
        )
    histogram: dict[str, Any] = {"edges": [], "positive": [], "negative": []}
    if top > 0:
        edges = np.linspace(0.0, top, bins + 1)
        histogram = {
            "edges": edges.tolist(),
            "positive": np.histogram(acts[firing & positive], edges)[0].tolist(),
            "negative": np.histogram(acts[firing & ~positive], edges)[0].tolist(),
        }
    return {
        "specificity": float(acts[firing & positive].sum()) / mass if mass > 0 else None,
        "sensitivity": int((firing & positive).sum()) / n_positive if n_positive else None,
        "max_activation": top,
        "n_firing": int(firing.sum()),
        "n_positive_firing": int((firing & positive).sum()),
        "thresholds": thresholds,
        "histogram": histogram,
    }


class CorrelationSums:
    """Running sums for the Pearson correlation of every unit [U] with every label column [P]."""

    def __init__(self, n_units: int, n_labels: int) -> None:
        self.n = 0
        self.sum_a = torch.zeros(n_units, dtype=torch.float64)
        self.sum_a2 = torch.zeros(n_units, dtype=torch.float64)
        self.sum_as = torch.zeros(n_units, n_labels, dtype=torch.float64)
        self.sum_s = torch.zeros(n_labels, dtype=torch.float64)
        self.sum_s2 = torch.zeros(n_labels, dtype=torch.float64)

    def add(self, acts: torch.Tensor, labels: torch.Tensor) -> None:
        """acts [T, U], labels [T, P]."""
        a, s = acts.double(), labels.double()
        self.n += a.shape[0]
        self.sum_a += a.sum(0)
        self.sum_a2 += (a * a).sum(0)
        self.sum_as += a.T @ s
        self.sum_s += s.sum(0)
        self.sum_s2 += (s * s).sum(0)

    def correlation(self) -> torch.Tensor:
        """[U, P] Pearson r; NaN where a unit or a label is constant."""
        n = self.n
        cov = n * self.sum_as - self.sum_a[:, None] * self.sum_s[None, :]
        var_a = (n * self.sum_a2 - self.sum_a**2).clamp_min(0)
        var_s = (n * self.sum_s2 - self.sum_s**2).clamp_min(0)
        denominator = (var_a[:, None] * var_s[None, :]).sqrt()
        return torch.where(denominator > 0, cov / denominator, torch.full_like(cov, math.nan))


def best_units(correlation: torch.Tensor) -> list[int | None]:
    """For each label column, the unit of highest correlation (None if every unit is constant)."""
    out: list[int | None] = []
    for column in correlation.T:
        valid = ~torch.isnan(column)
        out.append(int(torch.where(valid, column, -math.inf).argmax()) if bool(valid.any()) else None)
    return out


# ---------------------------------------------------------------------------- streaming


@dataclass
class Bases:
    """The two bases compared: the SAE's features and the model's neurons (the hook's coordinates)."""

    lm: HookedLM
    encode: Encode  # the SAE's: hook activations [N, d_in] -> [N, n_features]
    sae: Any  # for pinning a feature
    neurons: bool = True  # False: the hook's coordinates are not neurons


@torch.no_grad()
def _hook_batches(
    bases: Bases, tokens: np.ndarray, cfg: CaseStudyConfig
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(positions, hook activations [T, d_in]) per batch of whole windows."""
    n_ctx = bases.lm.n_ctx
    step = max(1, cfg.tokens_per_batch // n_ctx) * n_ctx
    for start in range(0, len(tokens), step):
        ids = torch.from_numpy(np.asarray(tokens[start : start + step], dtype=np.int64))
        with autocast_context(cfg.dtype):
            x = bases.lm.activations(ids.view(-1, n_ctx)).reshape(ids.numel(), -1)
        yield slice(start, start + ids.numel()), x


def _select_columns(
    bases: Bases,
    tokens: np.ndarray,
    cfg: CaseStudyConfig,
    cache: SparseCache,
    n_features: int,
    features: list[int],
    neurons: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """The chosen features' activations [T, len(features)], read back from pass 1's sparse cache
    (no second SAE encode), and the chosen neurons' [T, len(neurons)], from a second model run."""
    feature_acts = np.zeros((len(tokens), len(features)), dtype=np.float32)
    column = torch.full((n_features,), -1, dtype=torch.long)
    column[features] = torch.arange(len(features))
    for batch in cache:
        kept = column[batch.cols]
        mask = kept >= 0
        feature_acts[batch.positions[mask].numpy(), kept[mask].numpy()] = batch.values[mask].numpy()
    neuron_acts = np.zeros((len(tokens), len(neurons)), dtype=np.float32)
    if neurons:
        for where, x in _hook_batches(bases, tokens, cfg):
            neuron_acts[where] = x[:, neurons].float().numpy()
    return feature_acts, neuron_acts


@dataclass
class Labelled:
    proxy: Proxy
    scores: np.ndarray  # [T] in [0, 1]
    positive: np.ndarray  # [T] bool


def label_tokens(proxies: Sequence[Proxy], text: TokenText) -> tuple[list[Labelled], dict[str, str]]:
    """Each proxy's scores on the tokens; a proxy that raises is left out, its error kept by name."""
    labelled, errors = [], {}
    for proxy in proxies:
        try:
            scores = np.clip(np.asarray(proxy.score(text), dtype=np.float64), 0.0, 1.0)
            if scores.shape != (len(text),):
                raise ValueError(f"returned {scores.shape} scores for {len(text)} tokens")
        except Exception as exc:  # a user's proxy may fail any way: report it, run the others
            errors[proxy.name] = f"{type(exc).__name__}: {exc}"
            continue
        labelled.append(Labelled(proxy, scores, scores >= POSITIVE_SCORE))
    return labelled, errors


# ---------------------------------------------------------------------------- downstream


def _generated_score(
    proxy: Proxy, prompts: np.ndarray, generated: np.ndarray, vocab: Sequence[bytes], eot_id: int | None
) -> float:
    """The proxy's mean score over the generated tokens, each scored in its own text."""
    means = []
    for prompt, continuation in zip(prompts, generated, strict=True):
        text = decode_tokens(np.concatenate([prompt, continuation]), vocab, eot_id)
        means.append(float(np.mean(proxy.score(text)[len(prompt) :])))
    return float(np.mean(means)) if means else 0.0


def _decode(ids: np.ndarray, vocab: Sequence[bytes]) -> str:
    return b"".join(vocab[i] for i in ids.tolist()).decode("utf-8", "replace")


def prompts_from(tokens: np.ndarray, cfg: CaseStudyConfig) -> np.ndarray:
    """[n_prompts, prompt_tokens] windows spread evenly over the held-out tokens."""
    n = max(0, len(tokens) - cfg.prompt_tokens)
    starts = np.linspace(0, n, cfg.n_prompts).astype(np.int64)
    return np.stack([tokens[s : s + cfg.prompt_tokens] for s in starts]).astype(np.int64)


Pin = tuple[str, int, float]  # ('feature' | 'neuron', index, value)


def pinned_continuations(
    bases: Bases, prompts: np.ndarray, pins: Sequence[Pin], n_tokens: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Greedy continuations of the prompts unpinned and with each pin, all in one batch (a model
    call per token, not per token and pin): the unpinned [n_prompts, n_tokens], then one per pin."""
    n = len(prompts)
    batch = torch.from_numpy(np.tile(prompts, (1 + len(pins), 1)))

    def replacement(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        for k, (kind, index, value) in enumerate(pins):
            rows = slice((k + 1) * n, (k + 2) * n)
            if kind == "feature":
                out[rows] = pin_feature(x[rows], bases.sae, index, value)
            else:
                out[rows] = pin_neuron(x[rows], index, value)
        return out

    written = greedy_tokens(bases.lm, batch, n_tokens, replacement if pins else None).numpy()
    return written[:n], [written[(k + 1) * n : (k + 2) * n] for k in range(len(pins))]


def downstream(
    proxy: Proxy,
    prompts: np.ndarray,
    unpinned: np.ndarray,
    pinned: dict[str, tuple[Pin, np.ndarray] | None],
    vocab: Sequence[bytes],
    eot_id: int | None,
    cfg: CaseStudyConfig,
) -> dict[str, Any]:
    """The proxy's mean score on the continuations written unpinned, with the feature pinned and
    with the neuron pinned; and a few of them."""
    out: dict[str, Any] = {
        "n_prompts": len(prompts),
        "n_tokens": cfg.generate_tokens,
        "pin_scale": cfg.pin_scale,
        "unpinned": _generated_score(proxy, prompts, unpinned, vocab, eot_id),
    }
    texts: dict[str, np.ndarray] = {"unpinned": unpinned}
    for kind in ("feature", "neuron"):
        entry = pinned.get(kind)
        if entry is None:
            out[kind] = None
            continue
        (_, index, value), written = entry
        texts[kind] = written
        out[kind] = {
            "index": index,
            "value": value,
            "pinned": _generated_score(proxy, prompts, written, vocab, eot_id),
        }
    out["samples"] = [
        {"prompt": _decode(prompts[i], vocab), **{k: _decode(v[i], vocab) for k, v in texts.items()}}
        for i in range(min(cfg.n_samples, len(prompts)))
    ]
    return out


# ---------------------------------------------------------------------------- the case studies


def _summary(labelled: Labelled, n_tokens: int) -> dict[str, Any]:
    proxy = labelled.proxy
    return {
        "name": proxy.name,
        "description": proxy.description,
        "definition": proxy.definition,
        "builtin": proxy.builtin,
        "n_tokens": n_tokens,
        "n_positive": int(labelled.positive.sum()),
        "positive_score": POSITIVE_SCORE,
        "mean_score": float(labelled.scores.mean()) if n_tokens else 0.0,
    }


@torch.no_grad()
def case_studies(
    bases: Bases,
    tokens: np.ndarray,
    vocab: Sequence[bytes],
    proxies: Sequence[Proxy],
    cfg: CaseStudyConfig,
    eot_id: int | None = None,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Every proxy's case study on `tokens` (whole n_ctx windows), by proxy name: status 'ok',
    'no_match' (the proxy marks no token) or 'error' (it raised; the message is kept)."""
    lm = bases.lm
    was_training = lm.module.training
    lm.module.eval()
    try:
        text = decode_tokens(tokens, vocab, eot_id)
        labelled, errors = label_tokens(proxies, text)
        results: dict[str, dict[str, Any]] = {
            name: {"name": name, "status": "error", "error": error} for name, error in errors.items()
        }
        matched = [item for item in labelled if item.positive.any()]
        for item in labelled:
            if not item.positive.any():
                results[item.proxy.name] = {**_summary(item, len(tokens)), "status": "no_match"}
        if not matched:
            return results
        # Pass 1: every unit's correlation with every proxy.
        labels = torch.from_numpy(np.stack([item.positive for item in matched], 1).astype(np.float32))
        n_batches = math.ceil(len(tokens) / (max(1, cfg.tokens_per_batch // lm.n_ctx) * lm.n_ctx))
        bar = tqdm(total=2 * n_batches, desc="case studies", unit="batch", leave=False)
        feature_sums: CorrelationSums | None = None
        neuron_sums: CorrelationSums | None = None
        with SparseCache(1 << 15) as cache:  # int32 columns: any dictionary size
            for where, x in _hook_batches(bases, tokens, cfg):
                with autocast_context(cfg.dtype):
                    f = bases.encode(x)
                sparse, raw = sparsify(f, where.start)
                cache.append(sparse, raw)
                f, x = f.float(), x.float()
                if feature_sums is None or neuron_sums is None:
                    feature_sums = CorrelationSums(f.shape[1], len(matched))
                    neuron_sums = CorrelationSums(x.shape[1], len(matched))
                feature_sums.add(f, labels[where])
                if bases.neurons:
                    neuron_sums.add(x, labels[where])
                bar.update(1)
                if progress is not None:
                    progress("case studies: correlate", bar.n, 2 * n_batches)
            assert feature_sums is not None and neuron_sums is not None  # nosec B101  # tokens is not empty
            feature_r, neuron_r = feature_sums.correlation(), neuron_sums.correlation()
            best_features = best_units(feature_r)
            best_neurons = best_units(neuron_r) if bases.neurons else [None] * len(matched)
            # Pass 2: the chosen units' activations on every token.
            features = sorted({i for i in best_features if i is not None})
            neurons = sorted({i for i in best_neurons if i is not None})
            feature_acts, neuron_acts = _select_columns(
                bases, tokens, cfg, cache, int(feature_r.shape[0]), features, neurons
            )
        bar.update(n_batches)
        bar.close()
        pins: list[Pin] = []
        pin_of: dict[tuple[int, str], int] = {}  # (proxy, kind) -> its pin
        for p, item in enumerate(matched):
            result: dict[str, Any] = {**_summary(item, len(tokens)), "status": "ok"}
            for kind, best, r, acts, columns in (
                ("feature", best_features[p], feature_r, feature_acts, features),
                ("neuron", best_neurons[p], neuron_r, neuron_acts, neurons),
            ):
                if best is None:
                    result[kind] = None
                    continue
                column = acts[:, columns.index(best)]
                measures = unit_measures(column, item.positive, cfg.thresholds, cfg.histogram_bins)
                result[kind] = {"index": best, "correlation": float(r[best, p]), **measures}
                if measures["max_activation"] > 0:
                    pin_of[p, kind] = len(pins)
                    pins.append((kind, best, cfg.pin_scale * measures["max_activation"]))
            results[item.proxy.name] = result
        if cfg.n_prompts == 0:
            return results
        # Downstream: what the model writes with each unit pinned, every proxy's pins in one batch.
        prompts = prompts_from(tokens, cfg)
        unpinned, written = pinned_continuations(bases, prompts, pins, cfg.generate_tokens)
        for p, item in enumerate(matched):
            pinned = {
                kind: (pins[pin_of[p, kind]], written[pin_of[p, kind]]) if (p, kind) in pin_of else None
                for kind in ("feature", "neuron")
            }
            try:
                effect = downstream(item.proxy, prompts, unpinned, pinned, vocab, eot_id, cfg)
            except Exception as exc:  # the proxy scored the held-out text but fails on written text
                effect = {"error": f"{type(exc).__name__}: {exc}"}
            results[item.proxy.name]["downstream"] = effect
        return results
    finally:
        lm.module.train(was_training)
