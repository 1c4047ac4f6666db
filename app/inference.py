"""Live inference for one run: tokenise a text, run the model, read its features.

The run's tokenizer (`artifacts_path/tokenizer.json`), model (`artifacts_path/lm/`) and, for an
'sae' run, its SAE (`sae_path`) are loaded once per run and kept (`load_artifacts` is cached).
For a 'neurons' run the features are the MLP activations themselves.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOP_PER_TOKEN = 5


class ArtifactsUnavailable(RuntimeError):
    """The run's saved model cannot be loaded; the message says what is missing."""


@dataclass(frozen=True)
class Artifacts:
    tokenizer: Tokenizer
    model: Any  # trainer.model.OneLayerTransformer (torch is imported only when inference is used)
    sae: Any | None  # trainer.sae.SparseAutoencoder, None for a 'neurons' run
    n_ctx: int


@dataclass(frozen=True)
class Activations:
    token_ids: list[int]
    truncated: bool
    values: np.ndarray  # [seq, n_features]


@functools.lru_cache(maxsize=4)
def load_artifacts(kind: str, artifacts_path: str | None, sae_path: str | None) -> Artifacts:
    """Tokenizer, model and (for an 'sae' run) SAE of a run; raises ArtifactsUnavailable."""
    if not artifacts_path:
        raise ArtifactsUnavailable("This run records no artifacts folder, so there is no model to run.")
    root = Path(artifacts_path)
    tokenizer_path, lm_dir = root / "tokenizer.json", root / "lm"
    if not tokenizer_path.exists():
        raise ArtifactsUnavailable(f"The run's tokenizer is missing ({tokenizer_path}).")
    if not (lm_dir / "model.safetensors").exists():
        raise ArtifactsUnavailable(f"The run's model is missing ({lm_dir}).")
    if kind == "sae" and not sae_path:
        raise ArtifactsUnavailable("This run records no SAE folder, so its features cannot be computed.")
    try:
        from trainer.model import OneLayerTransformer
        from trainer.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)
        model = OneLayerTransformer.load(lm_dir)
        sae = None
        if kind == "sae":
            from trainer.sae import SparseAutoencoder

            sae = SparseAutoencoder.load(Path(str(sae_path)))
    except (OSError, ValueError, ImportError, RuntimeError, KeyError) as exc:
        raise ArtifactsUnavailable(f"The run's saved model could not be loaded: {exc}") from exc
    return Artifacts(tokenizer=tokenizer, model=model, sae=sae, n_ctx=int(model.cfg.n_ctx))


def feature_activations(artifacts: Artifacts, text: str) -> Activations:
    """Activations [seq, n_features] of every token of `text` (cut to the model's context)."""
    import torch

    token_ids: list[int] = list(artifacts.tokenizer.encode(text).ids)
    truncated = len(token_ids) > artifacts.n_ctx
    token_ids = token_ids[: artifacts.n_ctx]
    if not token_ids:
        return Activations(token_ids=[], truncated=False, values=np.zeros((0, 0), dtype=np.float32))
    with torch.no_grad():
        idx = torch.tensor([token_ids], dtype=torch.long)
        mlp = artifacts.model.mlp_activations(idx)[0].float()  # [seq, d_mlp]
        values = artifacts.sae.encode(mlp) if artifacts.sae is not None else mlp
    return Activations(token_ids=token_ids, truncated=truncated, values=values.float().numpy())


def top_features(values: np.ndarray, k: int = TOP_PER_TOKEN) -> list[list[tuple[int, float]]]:
    """Per token, the (index, activation) of its k strongest firing features, strongest first."""
    if values.size == 0:
        return [[] for _ in range(values.shape[0])]
    k = min(k, values.shape[1])
    top = np.argsort(-values, axis=1)[:, :k]
    return [
        [(int(i), float(row[i])) for i in order if row[i] > 0] for row, order in zip(values, top, strict=True)
    ]
