"""Harvest the activations at the hook point (our model's MLP, or any hook of a transformers
model: trainer/lm/hooks.py), for SAE training.

As in the paper, rows are shuffled across contexts: each shard is filled from many random
contexts of the training split and its rows are permuted before writing. Layout of the
output directory: `acts_00000.npy` (float16 [rows, d_mlp]), `doc_pos_00000.npy` (int64
[rows, 2]: document index and position in the document, so analysis can show contexts) and
`manifest.json` ({"d_in", "n_rows", "shards", "n_ctx", "seed", "hook", "model_digest": the sha256
of the model's weights, trainer/provenance.py}). A shard is a pure function of
(seed, shard index) and is written atomically, so an interrupted harvest resumes by skipping
the shards already on disk.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trainer.checkpoint import atomic_write_bytes, atomic_write_text
from trainer.config import HarvestConfig
from trainer.lm.hooks import HookedLM, as_hooked
from trainer.lm.model import OneLayerTransformer
from trainer.lm.train import autocast
from trainer.provenance import DIGEST_KEY

MANIFEST = "manifest.json"


def shard_names(index: int) -> tuple[str, str]:
    return f"acts_{index:05d}.npy", f"doc_pos_{index:05d}.npy"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def document_starts(tokens: np.ndarray, eot_id: int) -> np.ndarray:
    """Offsets where each document begins in the token stream (documents end with EOT)."""
    ends = np.flatnonzero(np.asarray(tokens) == eot_id)
    return np.concatenate([[0], ends + 1])


@torch.no_grad()
def harvest_shard(
    model: OneLayerTransformer | HookedLM,
    tokens: np.ndarray,
    starts_of_docs: np.ndarray,
    n_rows: int,
    cfg: HarvestConfig,
    shard_index: int,
    dtype: str = "bf16",
) -> tuple[np.ndarray, np.ndarray]:
    """Activations at the hook of `n_rows` tokens from random contexts, rows shuffled: (acts, doc_pos)."""
    lm = as_hooked(model)
    n_ctx = lm.n_ctx
    rng = np.random.default_rng([cfg.seed, shard_index])
    n_contexts = -(-n_rows // n_ctx)
    context_starts = rng.integers(0, len(tokens) - n_ctx, size=n_contexts)
    acts = torch.empty(n_contexts * n_ctx, lm.d_in, dtype=torch.float16)
    offsets = np.empty(n_contexts * n_ctx, dtype=np.int64)
    for first in range(0, n_contexts, cfg.batch_contexts):
        batch_starts = context_starts[first : first + cfg.batch_contexts]
        windows = np.stack([np.asarray(tokens[s : s + n_ctx], dtype=np.int64) for s in batch_starts])
        with autocast(dtype):
            hooked = lm.activations(torch.from_numpy(windows))
        rows = slice(first * n_ctx, (first + len(batch_starts)) * n_ctx)
        acts[rows] = hooked.reshape(-1, lm.d_in)  # to fp16 in torch: NumPy's cast is 10x slower
        offsets[rows] = (batch_starts[:, None] + np.arange(n_ctx)[None, :]).reshape(-1)
    order = rng.permutation(len(acts))[:n_rows]
    offsets = offsets[order]
    documents = np.searchsorted(starts_of_docs, offsets, side="right") - 1
    doc_pos = np.stack([documents, offsets - starts_of_docs[documents]], axis=1)
    return acts.index_select(0, torch.from_numpy(order)).numpy(), doc_pos


def harvest(
    model: OneLayerTransformer | HookedLM,
    tokens: np.ndarray,
    eot_id: int,
    cfg: HarvestConfig,
    out_dir: Path,
    dtype: str = "bf16",
    resume: bool = False,
    model_digest: str | None = None,
) -> dict:
    """Write `cfg.n_tokens` rows of activations in shards to `out_dir`; returns the manifest,
    which records `model_digest` (trainer.provenance.weights_digest; None: unknown). Without
    `resume`, shards already there (perhaps of another model) are replaced."""
    lm = as_hooked(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        for stale in [*out_dir.glob("acts_*.npy"), *out_dir.glob("doc_pos_*.npy"), out_dir / MANIFEST]:
            stale.unlink(missing_ok=True)
    starts_of_docs = document_starts(tokens, eot_id)
    n_shards = -(-cfg.n_tokens // cfg.shard_rows)
    shards = []
    with tqdm(total=cfg.n_tokens, desc="harvest", unit="tok", unit_scale=True) as bar:
        for index in range(n_shards):
            rows = min(cfg.shard_rows, cfg.n_tokens - index * cfg.shard_rows)
            acts_name, pos_name = shard_names(index)
            if not ((out_dir / acts_name).exists() and (out_dir / pos_name).exists()):
                acts, doc_pos = harvest_shard(lm, tokens, starts_of_docs, rows, cfg, index, dtype)
                atomic_write_bytes(out_dir / pos_name, _npy_bytes(doc_pos))
                atomic_write_bytes(out_dir / acts_name, _npy_bytes(acts))
            shards.append(acts_name)
            bar.update(rows)
    manifest = {
        "d_in": lm.d_in,
        "n_rows": cfg.n_tokens,
        "shards": shards,
        "n_ctx": lm.n_ctx,
        "hook": lm.hook,
        "seed": cfg.seed,
        "dtype": "float16",
        DIGEST_KEY: model_digest,
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2))
    return manifest
