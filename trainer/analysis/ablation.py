"""Ablation effects on the top examples: the paper's blue/red underlines (Bricken et al. 2023,
"Interface": per-token ablation effects).

For a feature i and a token at stream position p where it fires with activation a, the effect is

    Δ log p(next) = log p_ablated(t_{p+1}) − log p_sae(t_{p+1})

where p_sae splices the SAE's reconstruction x̂ into the MLP's output at every position (as
evaluation does) and p_ablated does the same with x̂ − a·W_dec[i] at position p. Negative: the
feature helped predict the actual next token (blue); positive: it hurt (red). Where the feature
does not fire the effect is 0 exactly.

The model has one layer and its MLP comes after attention, so what the MLP writes at p reaches the
logits at p only: removing the feature at p changes nothing elsewhere. So no model re-run per
ablation is needed: each needed position's residual (attention output) is computed once, and
an ablation is one LayerNorm and one unembedding of that residual minus a·(W_dec[i] W_out).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.analysis.stats import Windows
from trainer.analysis.stream import SparseBatch
from trainer.lm.model import OneLayerTransformer
from trainer.store.schema import pack_activations

ROWS_PER_CHUNK = 2048  # positions (or ablations) unembedded at once: [chunk, vocab] fp32 logits


@dataclass
class Pairs:
    """The (window, offset) slots where the window's feature fires, sorted by stream position."""

    window: torch.Tensor  # [P] index into the windows
    offset: torch.Tensor  # [P] offset within the window
    position: torch.Tensor  # [P] stream position
    feature: torch.Tensor  # [P]
    activation: torch.Tensor  # [P] float32


def firing_pairs(windows: Windows) -> Pairs:
    window, offset = (windows.valid & (windows.activations > 0)).nonzero(as_tuple=True)
    position = windows.start[window] + offset
    order = torch.argsort(position, stable=True)
    window, offset, position = window[order], offset[order], position[order]
    return Pairs(
        window, offset, position, windows.features[window], windows.activations[window, offset].float()
    )


def next_token_logprob(
    model: OneLayerTransformer, residual: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """log p(target) [N] from the final residual stream [N, d_model], in chunks."""
    out = torch.empty(residual.shape[0])
    for i in range(0, residual.shape[0], ROWS_PER_CHUNK):
        logits = model.unembed(model.ln_final(residual[i : i + ROWS_PER_CHUNK])).float()
        chosen = logits.gather(1, target[i : i + ROWS_PER_CHUNK].clamp_min(0).unsqueeze(1)).squeeze(1)
        out[i : i + ROWS_PER_CHUNK] = chosen - torch.logsumexp(logits, dim=1)
    return out


def _reconstruction(
    batch: SparseBatch,
    wanted: torch.Tensor,
    decoder: torch.Tensor,
    decoder_bias: torch.Tensor,
) -> torch.Tensor:
    """x̂ [len(wanted), d_mlp] at the stream positions `wanted` (sorted, all inside `batch`) from
    the batch's cached activations: a sparse product with the decoder."""
    row_of = torch.searchsorted(wanted, batch.positions).clamp_max(wanted.numel() - 1)
    inside = wanted[row_of] == batch.positions
    codes = torch.sparse_coo_tensor(
        torch.stack([row_of[inside], batch.cols[inside]]),
        batch.values[inside],
        (wanted.numel(), decoder.shape[0]),
        check_invariants=False,
    )
    return torch.sparse.mm(codes, decoder) + decoder_bias


@torch.no_grad()
def ablation_effects(
    model: OneLayerTransformer,
    windows: Windows,
    tokens: np.ndarray,
    next_tokens: np.ndarray,
    batches: Iterable[SparseBatch],
    decoder: torch.Tensor,
    decoder_bias: torch.Tensor | None,
) -> torch.Tensor:
    """Δ log p(next) [E, width] for every slot of `windows` (filled activations), from one replay
    of the cached stream. `tokens`: the analysed stream (whole n_ctx windows); `next_tokens`: the
    split it starts (its continuation gives the last token its next one; NaN where there is none).
    `decoder_bias` None: the basis is the MLP's own neurons, whose reconstruction is the MLP
    output itself (recomputed exactly, negative GELU values included)."""
    n_ctx = model.cfg.n_ctx
    effects = torch.zeros(windows.valid.shape)
    pairs = firing_pairs(windows)
    if pairs.position.numel() == 0:
        return effects
    positions = torch.unique(pairs.position)  # sorted
    after = positions + 1
    next_ids = torch.from_numpy(
        np.asarray(next_tokens[np.minimum(after.numpy(), len(next_tokens) - 1)], dtype=np.int64)
    )
    next_ids[after >= len(next_tokens)] = -1
    # What removing one unit of feature i writes into the residual stream: W_dec[i] W_out^T.
    write = decoder.float() @ model.mlp.W_out.weight.float().T  # [n_features, d_model]
    stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    for batch in batches:
        lo, hi = torch.searchsorted(
            positions, torch.tensor([batch.start, batch.start + batch.n_tokens])
        ).tolist()
        if lo == hi:
            continue
        wanted = positions[lo:hi]
        contexts, slot = torch.unique(wanted // n_ctx, return_inverse=True)
        ids = stream[(contexts.unsqueeze(1) * n_ctx + torch.arange(n_ctx)).reshape(-1)].view(-1, n_ctx)
        residual = model._residual_before_mlp(ids).reshape(-1, model.cfg.d_model)
        residual = residual[slot * n_ctx + wanted % n_ctx]  # [W, d_model]
        if decoder_bias is None:
            x_hat = model.mlp.post(model.ln_mlp(residual))
        else:
            x_hat = _reconstruction(batch, wanted, decoder.float(), decoder_bias.float())
        spliced = residual + model.mlp.W_out(x_hat)  # the final residual with x̂ spliced in
        target = next_ids[lo:hi]
        base = next_token_logprob(model, spliced, target)
        p_lo, p_hi = torch.searchsorted(
            pairs.position, torch.tensor([batch.start, batch.start + batch.n_tokens])
        ).tolist()
        for i in range(p_lo, p_hi, ROWS_PER_CHUNK):
            j = min(p_hi, i + ROWS_PER_CHUNK)
            row = torch.searchsorted(wanted, pairs.position[i:j])
            ablated = spliced[row] - pairs.activation[i:j, None] * write[pairs.feature[i:j]]
            delta = next_token_logprob(model, ablated, target[row]) - base[row]
            delta[target[row] < 0] = float("nan")
            effects[pairs.window[i:j], pairs.offset[i:j]] = delta
    return effects


# ---------------------------------------------------------------------------- rows


def effect_rows(windows: Windows, effects: torch.Tensor) -> list[dict[str, Any]]:
    """ExampleEffect columns (no run_id), one per window: its valid tokens' effects."""
    valid = windows.valid.numpy()
    values = effects.numpy()
    return [
        {
            "feature_index": feature,
            "source_position": focus,
            "effects": pack_activations(values[e][valid[e]]),
        }
        for e, (feature, focus) in enumerate(
            zip(windows.features.tolist(), windows.focus.tolist(), strict=True)
        )
    ]


def ablation_summary(windows: Windows, effects: torch.Tensor, n_most: int = 10) -> dict[str, Any]:
    """The run-level numbers of the "ablation" RunFinding (layout in trainer/store/schema.py)."""
    firing = windows.valid & (windows.activations > 0) & ~effects.isnan()
    values = effects[firing].double()
    offset = (windows.focus - windows.start).unsqueeze(1)
    focus = effects.gather(1, offset).squeeze(1).double()
    focus_ok = firing.gather(1, offset).squeeze(1)
    by_feature = torch.zeros(
        int(windows.features.max()) + 1 if windows.features.numel() else 0, dtype=torch.float64
    )
    counts = torch.zeros_like(by_feature)
    by_feature.index_add_(0, windows.features[focus_ok], focus[focus_ok])
    counts.index_add_(0, windows.features[focus_ok], torch.ones_like(focus[focus_ok]))
    mean = torch.where(counts > 0, by_feature / counts.clamp_min(1), torch.full_like(by_feature, torch.inf))
    ranked = [int(i) for i in torch.argsort(mean)[:n_most].tolist() if math.isfinite(float(mean[i]))]

    def median(x: torch.Tensor) -> float | None:
        return float(x.median()) if x.numel() else None

    return {
        "n_examples": int(windows.features.numel()),
        "n_firing_tokens": int(values.numel()),
        "helped_share": float((values < 0).double().mean()) if values.numel() else None,
        "median_effect": median(values),
        "median_focus_effect": median(focus[focus_ok]),
        "most_helpful": [{"index": i, "mean_focus_effect": float(mean[i])} for i in ranked],
    }
