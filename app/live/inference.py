"""Live inference for one run: tokenise a text, run the model, read its features.

A run's model is either ours (`artifacts_path` holds tokenizer.json and lm/) or a transformers
causal LM (the stored config's `model_path`, read at its `hook` through trainer.lm.hf_model, with
its own tokenizer); an 'sae' run adds its SAE (`sae_path`, ours or SAELens's layout). They are
loaded once per run and kept (`load_artifacts` is cached, in the app's live model processes:
app/live/pool.py). For a 'neurons' run the features are the activations at the hook (the MLP's
neurons) themselves.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

if TYPE_CHECKING:
    from sqlalchemy.orm import Session
    from tokenizers import Tokenizer

    from trainer.lm.hooks import HookedLM
    from trainer.store.schema import Run

TOP_PER_TOKEN = 5
KEPT_MODELS = 4  # runs whose models a live process keeps loaded (`_load_artifacts`'s cache)


class ArtifactsUnavailable(RuntimeError):
    """The run records no model to run (or one that cannot be loaded); the message says why."""


class ModelMissing(RuntimeError):
    """A model, tokenizer or SAE folder the run records is gone from disk; the message names it.
    The live pages answer 503: the run is fine, the server cannot run it until the folder is back."""


@dataclass(frozen=True)
class ModelSource:
    """What a run records about the model its live pages run (hashable: the cache's key)."""

    kind: str  # 'sae' or 'neurons'
    artifacts_path: str | None  # our model: the folder with tokenizer.json and lm/
    sae_path: str | None
    model_path: str | None  # a transformers model (a folder, or a hub id) read at `hook`
    hook: str | None
    n_ctx: int


def model_source(record: Run) -> ModelSource:
    """The model, hook and SAE a run was analysed on, from its row and stored RunConfig."""
    config: dict[str, Any] = record.config or {}
    model: dict[str, Any] = config.get("model") or {}
    return ModelSource(
        kind=record.kind,
        artifacts_path=record.artifacts_path,
        sae_path=record.sae_path,
        model_path=config.get("model_path"),
        hook=config.get("hook"),
        n_ctx=int(model.get("n_ctx") or 0),
    )


@dataclass(frozen=True)
class Artifacts:
    tokenizer: Tokenizer
    lm: HookedLM  # the model at its hook (torch is imported only when inference is used)
    sae: Any | None  # trainer.sae.SparseAutoencoder, None for a 'neurons' run
    n_ctx: int
    add_special_tokens: bool = True  # False for a transformers model: as its corpus was encoded
    # Forward hooks are set on the shared model for the length of a call: one call at a time.
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids)


@dataclass(frozen=True)
class Activations:
    token_ids: list[int]
    truncated: bool
    values: np.ndarray  # [seq, n_features]


def _load_sae(source: ModelSource, d_in: int) -> Any | None:
    if source.kind != "sae":
        return None
    if not source.sae_path:
        raise ArtifactsUnavailable("This run records no SAE folder, so its features cannot be computed.")
    from trainer.sae import SparseAutoencoder

    sae = SparseAutoencoder.load(Path(source.sae_path))
    if int(sae.W_dec.shape[1]) != d_in:
        raise ArtifactsUnavailable(
            f"The run's SAE ({source.sae_path}) reads {int(sae.W_dec.shape[1])}-dimensional inputs "
            f"but the model's hook has {d_in}."
        )
    return sae


def _load_transformers(source: ModelSource) -> Artifacts:
    assert source.model_path is not None  # nosec B101  # narrows the type for mypy
    if not source.hook:
        raise ArtifactsUnavailable("This run names a transformers model but no hook point.")
    from trainer.lm.hf_model import load_hooked, load_tokenizer

    tokenizer = load_tokenizer(source.model_path).backend_tokenizer
    lm = load_hooked(source.model_path, source.hook, n_ctx=source.n_ctx or 1024, device="cpu")
    sae = _load_sae(source, lm.d_in)
    return Artifacts(tokenizer=tokenizer, lm=lm, sae=sae, n_ctx=lm.n_ctx, add_special_tokens=False)


def _load_own(source: ModelSource) -> Artifacts:
    if not source.artifacts_path:
        raise ArtifactsUnavailable("This run records no artifacts folder, so there is no model to run.")
    root = Path(source.artifacts_path)
    tokenizer_path, lm_dir = root / "tokenizer.json", root / "lm"
    from trainer.corpus.tokenizer import load_tokenizer
    from trainer.lm.hooks import OneLayerHooked
    from trainer.lm.model import OneLayerTransformer

    lm = OneLayerHooked(OneLayerTransformer.load(lm_dir))
    sae = _load_sae(source, lm.d_in)
    return Artifacts(tokenizer=load_tokenizer(tokenizer_path), lm=lm, sae=sae, n_ctx=int(lm.n_ctx))


def _check_present(source: ModelSource) -> None:
    """ModelMissing if a folder or file the run records is gone from disk."""
    if source.model_path:
        folder = Path(source.model_path)
        if folder.is_absolute() and not folder.is_dir():  # stored absolute when it was a folder
            raise ModelMissing(f"The run's model folder is missing ({folder}).")
    elif source.artifacts_path:
        root = Path(source.artifacts_path)
        if not (root / "tokenizer.json").exists():
            raise ModelMissing(f"The run's tokenizer is missing ({root / 'tokenizer.json'}).")
        if not (root / "lm" / "model.safetensors").exists():
            raise ModelMissing(f"The run's model is missing ({root / 'lm'}).")
    if source.kind == "sae" and source.sae_path and not Path(source.sae_path).is_dir():
        raise ModelMissing(f"The run's SAE folder is missing ({source.sae_path}).")


def load_artifacts(source: ModelSource) -> Artifacts:
    """Tokenizer, model at its hook and (for an 'sae' run) SAE of a run, loaded once and kept;
    raises ModelMissing for a recorded folder that is gone (checked on every call: a model kept
    from before would otherwise still answer), ArtifactsUnavailable for anything else that stops it."""
    _check_present(source)
    return _load_artifacts(source)


@functools.lru_cache(maxsize=KEPT_MODELS)
def _load_artifacts(source: ModelSource) -> Artifacts:
    try:
        return _load_transformers(source) if source.model_path else _load_own(source)
    except (ArtifactsUnavailable, ModelMissing):
        raise
    except (OSError, ValueError, ImportError, RuntimeError, KeyError) as exc:
        raise ArtifactsUnavailable(f"The run's saved model could not be loaded: {exc}") from exc


def preload_sources(session: Session) -> list[ModelSource]:
    """The models a live process loads when it starts: those of the newest complete runs (as many
    as it keeps), when they are on this machine (a hub id could download: it waits for a request)."""
    from trainer.store.schema import Run

    newest = session.scalars(select(Run).where(Run.status == "complete").order_by(Run.id.desc()))
    sources: list[ModelSource] = []
    for record in newest:
        source = model_source(record)
        local = Path(source.model_path).is_dir() if source.model_path else source.artifacts_path is not None
        if local and source not in sources:
            sources.append(source)
        if len(sources) == KEPT_MODELS:
            break
    return sources


def preload(sources: list[ModelSource]) -> int:
    """Load the models of `sources` into this process's cache (a live process's first job);
    how many loaded. One that cannot be loaded is skipped: its requests will say why."""
    loaded = 0
    for source in sources:
        try:
            load_artifacts(source)
        except (ArtifactsUnavailable, ModelMissing):
            continue
        loaded += 1
    return loaded


def feature_activations(artifacts: Artifacts, text: str) -> Activations:
    """Activations [seq, n_features] of every token of `text` (cut to the model's context)."""
    import torch

    token_ids = artifacts.encode(text)
    truncated = len(token_ids) > artifacts.n_ctx
    token_ids = token_ids[: artifacts.n_ctx]
    if not token_ids:
        return Activations(token_ids=[], truncated=False, values=np.zeros((0, 0), dtype=np.float32))
    with torch.no_grad(), artifacts.lock:
        idx = torch.tensor([token_ids], dtype=torch.long)
        at_hook = artifacts.lm.activations(idx)[0].float()  # [seq, d_in]
        values = artifacts.sae.encode(at_hook) if artifacts.sae is not None else at_hook
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
