"""The analysis stream: hook activations of the held-out tokens, encoded into a basis, kept sparse.

Pass 1 runs the model and the encoder once over the stream (contiguous, non-overlapping windows
of `n_ctx` tokens, `tokens_per_batch` tokens at a time) and keeps only the nonzero activations,
in CSR form, in a temporary on-disk cache. Later passes (histograms, interval samples, example
windows) read the cache instead of re-encoding: the SAE encode is most of the cost, and the
cache holds every activation exactly as the stream computed it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.lm.hooks import as_hooked

Encode = Callable[[torch.Tensor], torch.Tensor]  # x[N, d_in] -> f[N, n_features]


@dataclass
class SparseBatch:
    """The positive activations of stream positions [start, start + n_tokens), row-major."""

    start: int
    n_tokens: int
    rows: torch.Tensor  # [nnz] int64, position within the batch (ascending)
    cols: torch.Tensor  # [nnz] int64, feature index
    values: torch.Tensor  # [nnz] float32, > 0

    @property
    def positions(self) -> torch.Tensor:
        return self.rows + self.start


def autocast_context(dtype: str) -> contextlib.AbstractContextManager[object]:
    if dtype == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sparsify(f: torch.Tensor, start: int) -> tuple[SparseBatch, torch.Tensor]:
    """The positive entries of f[T, n_features]; also returns their values in f's own dtype."""
    n_tokens, n_features = f.shape
    flat = f.reshape(-1)
    index = flat.nonzero().squeeze(1)  # != 0; -0.0 and (GELU) negatives are dropped just below
    raw = flat[index]
    positive = raw > 0
    if not bool(positive.all()):
        index, raw = index[positive], raw[positive]
    rows, cols = index // n_features, index % n_features
    return SparseBatch(start, n_tokens, rows, cols, raw.float()), raw


@torch.no_grad()
def encode_stream(
    model: Any,
    encode: Encode,
    tokens: np.ndarray,
    n_ctx: int,
    tokens_per_batch: int,
    dtype: str,
) -> Iterator[tuple[SparseBatch, torch.Tensor, torch.Tensor]]:
    """(sparse batch, raw values in the encoder's dtype, token ids[T]) for each batch of the stream.

    `tokens` must hold a whole number of n_ctx windows; batches hold whole windows. `model`: a
    HookedLM, or our OneLayerTransformer.
    """
    lm = as_hooked(model)
    contexts_per_batch = max(1, tokens_per_batch // n_ctx)
    step = contexts_per_batch * n_ctx
    for start in range(0, len(tokens), step):
        ids = torch.from_numpy(np.asarray(tokens[start : start + step], dtype=np.int64))
        with autocast_context(dtype):
            acts = lm.activations(ids.view(-1, n_ctx)).to(ids.device)
            f = encode(acts.reshape(ids.numel(), -1))
        batch, raw = sparsify(f, start)
        yield batch, raw, ids


class SparseCache:
    """Append-only on-disk store of SparseBatches (CSR: per-row counts, int16/32 columns, values in
    the encoder's dtype), replayed batch by batch. Delete with `close` (or use as a context)."""

    def __init__(self, n_features: int, directory: str | Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="analysis-cache-", dir=directory)
        root = Path(self._dir.name)
        self._col_dtype = np.int16 if n_features < 2**15 else np.int32
        self._files = {name: open(root / f"{name}.bin", "w+b") for name in ("counts", "cols", "values")}
        self._index: list[tuple[int, int, int, str]] = []  # (start, n_tokens, nnz, values dtype)

    def append(self, batch: SparseBatch, raw: torch.Tensor) -> None:
        counts = torch.bincount(batch.rows, minlength=batch.n_tokens).to(torch.int32)
        self._files["counts"].write(counts.numpy().tobytes())
        self._files["cols"].write(batch.cols.numpy().astype(self._col_dtype).tobytes())
        if raw.dtype == torch.bfloat16:
            values, kind = raw.view(torch.int16).numpy(), "bf16"
        else:
            values, kind = raw.float().numpy(), "f32"
        self._files["values"].write(values.tobytes())
        self._index.append((batch.start, batch.n_tokens, int(batch.rows.numel()), kind))

    def __iter__(self) -> Iterator[SparseBatch]:
        for handle in self._files.values():
            handle.flush()
            handle.seek(0)
        for start, n_tokens, nnz, kind in self._index:
            counts = np.frombuffer(self._files["counts"].read(4 * n_tokens), dtype=np.int32)
            cols = np.frombuffer(
                self._files["cols"].read(np.dtype(self._col_dtype).itemsize * nnz), dtype=self._col_dtype
            )
            if kind == "bf16":
                raw = np.frombuffer(self._files["values"].read(2 * nnz), dtype=np.int16)
                values = torch.from_numpy(raw.copy()).view(torch.bfloat16).float()
            else:
                values = torch.from_numpy(
                    np.frombuffer(self._files["values"].read(4 * nnz), np.float32).copy()
                )
            rows = torch.repeat_interleave(torch.arange(n_tokens), torch.from_numpy(counts.astype(np.int64)))
            yield SparseBatch(start, n_tokens, rows, torch.from_numpy(cols.astype(np.int64)), values)

    @property
    def n_bytes(self) -> int:
        return sum(handle.tell() for handle in self._files.values())

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._dir.cleanup()

    def __enter__(self) -> SparseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- grouped top-k


class GroupedTopK:
    """Exact running top-k per group (a feature, or a (feature, band) pair) of a scored stream.

    Order: score descending, then position ascending (so among equal scores the earliest wins).
    New candidates only need to beat the group's current k-th score (`threshold`), so after the
    first batches only a handful of entries per batch reach the merge, which sorts them together
    with the kept entries — vectorised over all groups at once.
    """

    def __init__(self, n_groups: int, k: int, floor: float) -> None:
        self.k = k
        self.floor = floor  # scores must exceed this to be kept at all
        self.scores = torch.full((n_groups, k), -torch.inf)
        self.positions = torch.full((n_groups, k), -1, dtype=torch.long)
        self.threshold = torch.full((n_groups,), floor)

    def candidates(self, groups: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Mask of the entries that could enter their group's top-k."""
        return scores > self.threshold[groups]

    def update(self, groups: torch.Tensor, scores: torch.Tensor, positions: torch.Tensor) -> None:
        """Merge entries (whose positions all follow the kept ones) into the running top-k."""
        if groups.numel() == 0:
            return
        n_groups, k = self.scores.shape
        kept = self.positions >= 0
        all_groups = torch.cat([torch.arange(n_groups).unsqueeze(1).expand(n_groups, k)[kept], groups])
        all_scores = torch.cat([self.scores[kept], scores])
        all_positions = torch.cat([self.positions[kept], positions])
        # One stable sort on the key (group, -score): scores are >= 0 floats here (activations,
        # priorities), whose IEEE bits order like their values. Kept entries come first and in
        # rank order, new ones in stream order, so stability breaks ties by position.
        score_bits = all_scores.clamp_min(0).view(torch.int32).long()
        order = torch.sort(all_groups * 2**32 + (2**31 - 1 - score_bits), stable=True).indices
        sorted_groups = all_groups[order]
        group_sizes = torch.bincount(sorted_groups, minlength=n_groups)
        group_starts = torch.cumsum(group_sizes, 0) - group_sizes
        rank = torch.arange(order.numel()) - group_starts[sorted_groups]
        keep = rank < k
        order, sorted_groups, rank = order[keep], sorted_groups[keep], rank[keep]
        self.scores.fill_(-torch.inf)
        self.positions.fill_(-1)
        self.scores[sorted_groups, rank] = all_scores[order]
        self.positions[sorted_groups, rank] = all_positions[order]
        full = self.positions[:, k - 1] >= 0
        self.threshold = torch.where(full, self.scores[:, k - 1], torch.full_like(self.threshold, self.floor))
