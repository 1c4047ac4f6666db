"""Evaluate a trained SAE on held-out text (Bricken et al. 2023, "Autoencoder evaluation" metrics).

On non-overlapping windows of n_ctx + 1 held-out tokens: reconstruction error (mse: squared error
summed over d_in, mean over tokens; fvu: that error over the variance about the per-dimension
mean), L0, the dead and dense fractions and the log10 feature-density histogram, and how much of
the hook's contribution to the next-token loss survives splicing the reconstruction in there
(our model's MLP, or any hook of a transformers model: trainer/lm/hooks.py):

    ce_loss_recovered = (ce_zero_ablation − ce_with_sae) / (ce_zero_ablation − ce_clean)

and the same against mean ablation (the hook's mean over the evaluation tokens spliced in),
`ce_loss_recovered_mean`, the fairer baseline where zeros are far off-distribution (the
residual stream).
"""

from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from trainer.checkpoint import atomic_write_bytes, atomic_write_text
from trainer.config import EvalConfig
from trainer.lm.hooks import HookedLM, as_hooked
from trainer.lm.model import OneLayerTransformer
from trainer.sae import SparseAutoencoder

EVAL_FILE = "eval.json"
DENSITY_FILE = "feature_density.npy"
HISTOGRAM_BINS = 40


@dataclass
class EvalResult:
    n_tokens: int
    mse: float
    fvu: float
    l0: float
    dead_fraction: float  # never fired on the evaluation tokens
    dense_fraction: float  # fired on more than dense_threshold of them
    ce_clean: float
    ce_with_sae: float
    ce_zero_ablation: float
    ce_loss_recovered: float
    density_hist_edges: list[float]  # log10 feature density bin edges
    density_hist_counts: list[int]
    n_zero_density: int  # features that never fired, outside the histogram
    feature_density: np.ndarray = field(repr=False)  # [d_sae] fraction of tokens each feature fired on
    training: dict[str, Any] = field(default_factory=dict)  # the SAE's training record (λ reached, ...)
    ce_mean_ablation: float = float("nan")
    ce_loss_recovered_mean: float = float("nan")
    hook: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the per-feature array (saved beside it as feature_density.npy)."""
        data = asdict(self)
        data.pop("feature_density")
        return data


def context_windows(val_tokens: np.ndarray, n_ctx: int, max_tokens: int) -> np.ndarray:
    """Non-overlapping windows [n_windows, n_ctx + 1] covering at most max_tokens predicted tokens,
    spread evenly over the whole split (not its first max_tokens): the split is whole documents in
    corpus order, so a contiguous slice is a few documents of one kind. On the demo an L1 SAE
    trained to L0 16 (15.7 on training rows) read L0 12.1 on the split's first 200k tokens and
    14.0 on windows spread over it."""
    window = n_ctx + 1
    n_available = len(val_tokens) // window
    n_windows = min(n_available, math.ceil(max_tokens / n_ctx))
    if n_windows == 0:
        raise ValueError(f"held-out text has {len(val_tokens)} tokens: too few for one window of {window}")
    grid = np.asarray(val_tokens[: n_available * window], dtype=np.int64).reshape(n_available, window)
    chosen = np.linspace(0, n_available - 1, n_windows).round().astype(np.int64)
    return grid[chosen]


def density_histogram(feature_density: np.ndarray, n_tokens: int) -> tuple[list[float], list[int], int]:
    """Histogram of log10 density over [log10(1/n_tokens), 0] for the features that ever fired."""
    fired = feature_density[feature_density > 0]
    low = math.floor(math.log10(1.0 / n_tokens))
    edges = np.linspace(low, 0.0, HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(np.log10(fired), bins=edges)
    return edges.tolist(), counts.tolist(), int((feature_density == 0).sum())


def _replace_with(replacement: torch.Tensor, _activations: torch.Tensor) -> torch.Tensor:
    return replacement


def _recovered(ablated: float, spliced: float, clean: float) -> float:
    return (ablated - spliced) / (ablated - clean) if ablated != clean else float("nan")


def hook_mean(lm: HookedLM, windows: np.ndarray, batch_contexts: int, device: torch.device) -> torch.Tensor:
    """[d_in] mean of the hook's activations over every predicted position of `windows`."""
    total = torch.zeros(lm.d_in, dtype=torch.float64, device=device)
    for start in range(0, len(windows), batch_contexts):
        idx = torch.from_numpy(windows[start : start + batch_contexts, :-1]).to(device)
        total += lm.activations(idx).to(device).double().reshape(-1, lm.d_in).sum(0)
    return (total / (len(windows) * (windows.shape[1] - 1))).float()


@torch.no_grad()
def evaluate_sae(
    model: OneLayerTransformer | HookedLM,
    sae: SparseAutoencoder,
    val_tokens: np.ndarray,
    cfg: EvalConfig,
    n_ctx: int,
    out_dir: Path | None = None,
    progress: bool = True,
) -> EvalResult:
    """All metrics on held-out tokens, in fp32, on the SAE's device; written to out_dir/eval.json
    when out_dir is given."""
    lm = as_hooked(model)
    lm.module.eval()
    sae.eval()
    device = sae.W_dec.device
    windows = context_windows(val_tokens, n_ctx, cfg.n_tokens)
    mean = hook_mean(lm, windows, cfg.batch_contexts, device)
    d_in = sae.cfg.d_in
    n_tokens, active = 0, 0
    sq_error, x_sum, x_sq_sum = 0.0, torch.zeros(d_in, dtype=torch.float64, device=device), 0.0
    fire_counts = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=device)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "mean": 0.0}
    batches = range(0, len(windows), cfg.batch_contexts)
    for start in tqdm(batches, disable=not progress, desc="evaluate sae", unit="batch"):
        chunk = torch.from_numpy(windows[start : start + cfg.batch_contexts]).to(device)
        idx, targets = chunk[:, :-1], chunk[:, 1:]
        tokens = idx.numel()
        clean_loss, hooked = lm.run(idx, targets)
        x = hooked.to(device).float().reshape(-1, d_in)  # [tokens, d_in]
        x_hat, f = sae(x)
        reconstruction = x_hat.reshape(hooked.shape)
        losses = {
            "clean": clean_loss,
            "sae": lm.run(idx, targets, functools.partial(_replace_with, reconstruction))[0],
            "zero": lm.run(idx, targets, torch.zeros_like)[0],
            "mean": lm.run(idx, targets, lambda x: mean.to(x.device).expand_as(x))[0],
        }
        # Losses are means over a batch's tokens: weight them by its token count.
        for key, loss in losses.items():
            ce[key] += float(loss) * tokens
        sq_error += float((x_hat - x).double().pow(2).sum())
        x_sum += x.double().sum(0)
        x_sq_sum += float(x.double().pow(2).sum())
        fired = f > 0
        fire_counts += fired.sum(0).double()
        active += int(fired.sum())
        n_tokens += tokens

    # Σ‖x − mean‖² = Σ‖x‖² − N‖mean‖², the variance about the per-dimension mean.
    total_variance = x_sq_sum - float((x_sum**2).sum()) / n_tokens
    feature_density = (fire_counts / n_tokens).cpu().numpy()
    ce_clean, ce_sae, ce_zero, ce_mean = (ce[k] / n_tokens for k in ("clean", "sae", "zero", "mean"))
    edges, counts, n_zero = density_histogram(feature_density, n_tokens)
    result = EvalResult(
        n_tokens=n_tokens,
        mse=sq_error / n_tokens,
        fvu=sq_error / total_variance if total_variance > 0 else float("nan"),
        l0=active / n_tokens,
        dead_fraction=float((fire_counts == 0).double().mean()),
        dense_fraction=float((feature_density > cfg.dense_threshold).mean()),
        ce_clean=ce_clean,
        ce_with_sae=ce_sae,
        ce_zero_ablation=ce_zero,
        ce_loss_recovered=_recovered(ce_zero, ce_sae, ce_clean),
        density_hist_edges=edges,
        density_hist_counts=counts,
        n_zero_density=n_zero,
        feature_density=feature_density,
        training=dict(sae.training_record),
        ce_mean_ablation=ce_mean,
        ce_loss_recovered_mean=_recovered(ce_mean, ce_sae, ce_clean),
        hook=lm.hook,
    )
    if out_dir is not None:
        save_eval(result, Path(out_dir))
    return result


def save_eval(result: EvalResult, out_dir: Path) -> None:
    """eval.json and feature_density.npy in the SAE's directory, each written atomically."""
    buffer = io.BytesIO()
    np.save(buffer, result.feature_density.astype(np.float32))
    atomic_write_bytes(out_dir / DENSITY_FILE, buffer.getvalue())
    atomic_write_text(out_dir / EVAL_FILE, json.dumps(result.to_dict(), indent=2))
