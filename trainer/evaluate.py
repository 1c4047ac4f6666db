"""Evaluate a trained SAE on held-out text (Bricken et al. 2023, "Autoencoder evaluation" metrics).

On non-overlapping windows of n_ctx + 1 held-out tokens: reconstruction error (mse: squared error
summed over d_in, mean over tokens; fvu: that error over the variance about the per-dimension
mean), L0, the dead and dense fractions and the log10 feature-density histogram, and how much of
the MLP's contribution to the next-token loss survives splicing the reconstruction in:

    ce_loss_recovered = (ce_zero_ablation − ce_with_sae) / (ce_zero_ablation − ce_clean)
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
from trainer.model import OneLayerTransformer
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the per-feature array (saved beside it as feature_density.npy)."""
        data = asdict(self)
        data.pop("feature_density")
        return data


def context_windows(val_tokens: np.ndarray, n_ctx: int, max_tokens: int) -> np.ndarray:
    """Non-overlapping windows [n_windows, n_ctx + 1] covering at most max_tokens predicted tokens."""
    window = n_ctx + 1
    n_windows = min(len(val_tokens) // window, math.ceil(max_tokens / n_ctx))
    if n_windows == 0:
        raise ValueError(f"held-out text has {len(val_tokens)} tokens: too few for one window of {window}")
    return np.asarray(val_tokens[: n_windows * window], dtype=np.int64).reshape(n_windows, window)


def density_histogram(feature_density: np.ndarray, n_tokens: int) -> tuple[list[float], list[int], int]:
    """Histogram of log10 density over [log10(1/n_tokens), 0] for the features that ever fired."""
    fired = feature_density[feature_density > 0]
    low = math.floor(math.log10(1.0 / n_tokens))
    edges = np.linspace(low, 0.0, HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(np.log10(fired), bins=edges)
    return edges.tolist(), counts.tolist(), int((feature_density == 0).sum())


def _replace_with(replacement: torch.Tensor, _mlp_post: torch.Tensor) -> torch.Tensor:
    return replacement


@torch.no_grad()
def evaluate_sae(
    model: OneLayerTransformer,
    sae: SparseAutoencoder,
    val_tokens: np.ndarray,
    cfg: EvalConfig,
    n_ctx: int,
    out_dir: Path | None = None,
    progress: bool = True,
) -> EvalResult:
    """All metrics on held-out tokens, in fp32, on the SAE's device; written to out_dir/eval.json
    when out_dir is given."""
    model.eval()
    sae.eval()
    device = sae.W_dec.device
    windows = context_windows(val_tokens, n_ctx, cfg.n_tokens)
    d_in = sae.cfg.d_in
    n_tokens, active = 0, 0
    sq_error, x_sum, x_sq_sum = 0.0, torch.zeros(d_in, dtype=torch.float64, device=device), 0.0
    fire_counts = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=device)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    batches = range(0, len(windows), cfg.batch_contexts)
    for start in tqdm(batches, disable=not progress, desc="evaluate sae", unit="batch"):
        chunk = torch.from_numpy(windows[start : start + cfg.batch_contexts]).to(device)
        idx, targets = chunk[:, :-1], chunk[:, 1:]
        tokens = idx.numel()
        clean = model(idx, targets, return_mlp_post=True)
        assert clean.loss is not None and clean.mlp_post is not None  # nosec B101  # narrows the type for mypy; never false
        x = clean.mlp_post.float().reshape(-1, d_in)  # [tokens, d_in]
        x_hat, f = sae(x)
        reconstruction = x_hat.reshape(clean.mlp_post.shape)
        with_sae = model(idx, targets, mlp_replacement=functools.partial(_replace_with, reconstruction))
        zero = model(idx, targets, mlp_replacement=torch.zeros_like)
        assert with_sae.loss is not None and zero.loss is not None  # nosec B101  # narrows the type for mypy; never false
        # Losses are means over a batch's tokens: weight them by its token count.
        ce["clean"] += float(clean.loss) * tokens
        ce["sae"] += float(with_sae.loss) * tokens
        ce["zero"] += float(zero.loss) * tokens
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
    ce_clean, ce_sae, ce_zero = (ce[k] / n_tokens for k in ("clean", "sae", "zero"))
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
        ce_loss_recovered=(ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
        density_hist_edges=edges,
        density_hist_counts=counts,
        n_zero_density=n_zero,
        feature_density=feature_density,
        training=dict(sae.training_record),
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
