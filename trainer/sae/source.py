"""Where the SAE's training inputs come from: a harvest directory of activation shards or a user's
file, read as fp32 batches [batch_size, d_in] by a plain iterator that can resume mid-run."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy_safetensors

from trainer.checkpoint import CheckpointError
from trainer.provenance import recorded_model


class ActivationShapeError(ValueError):
    """Activations whose shape does not fit the SAE (wrong width, not 2-D, empty)."""


class ActivationSource(Iterator[torch.Tensor]):
    """Yields fp32 batches [batch_size, d_in] forever, cycling over shards.

    Each pass ("epoch") visits the shards in a seeded random order; `shuffle_rows` also permutes
    the rows of each shard per epoch (for a user's file; harvested shards are shuffled already).
    `state_dict()` is taken between batches, so a resumed run reads exactly the same batches.
    Batches are multiplied by `scale` (the training's input normalisation, set by its state).
    """

    def __init__(
        self,
        shards: list[Callable[[], np.ndarray]],
        shard_rows: list[int],
        d_in: int,
        batch_size: int,
        seed: int,
        shuffle_rows: bool,
        name: str,
    ) -> None:
        if sum(shard_rows) == 0:
            raise ActivationShapeError(f"activations in {name} have no rows")
        self.shards, self.shard_rows = shards, shard_rows
        self.d_in, self.batch_size, self.seed = d_in, batch_size, seed
        self.shuffle_rows, self.name = shuffle_rows, name
        self.epoch, self.shard_pos, self.row = 0, 0, 0
        self.local_rows = slice(None)  # under data parallelism, this rank's part of each batch
        self.scale = 1.0
        self.recorded_model: dict[str, Any] = {}  # a harvest's model (trainer/provenance.py)
        self._cache: tuple[tuple[int, int], np.ndarray] | None = None

    @property
    def n_rows(self) -> int:
        return sum(self.shard_rows)

    def _shard_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))

    def _current_rows(self) -> np.ndarray:
        shard = int(self._shard_order(self.epoch)[self.shard_pos])
        key = (self.epoch, shard)
        if self._cache is None or self._cache[0] != key:
            rows = self.shards[shard]()
            if self.shuffle_rows:
                rows = rows[np.random.default_rng([self.seed, self.epoch, shard, 1]).permutation(len(rows))]
            self._cache = (key, rows)
        return self._cache[1]

    def __iter__(self) -> ActivationSource:
        return self

    def _next_pieces(self) -> list[np.ndarray]:
        """The next global batch as views into the shards (nothing read from disk yet)."""
        pieces, needed = [], self.batch_size
        while needed > 0:
            rows = self._current_rows()
            take = min(needed, len(rows) - self.row)
            pieces.append(rows[self.row : self.row + take])
            self.row += take
            needed -= take
            if self.row >= len(rows):
                self.row, self.shard_pos = 0, self.shard_pos + 1
                if self.shard_pos == len(self.shards):
                    self.shard_pos, self.epoch = 0, self.epoch + 1
        return pieces

    def __next__(self) -> torch.Tensor:
        """This process's rows (`local_rows`) of the next global batch; all of it in one process."""
        pieces = _slice_pieces(self._next_pieces(), self.local_rows)
        batch = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        return self._checked(torch.from_numpy(np.asarray(batch, dtype=np.float32)))

    def take_rows(self, n_rows: int) -> torch.Tensor:
        """The next `n_rows` rows of whole global batches (every process gets all of them), fp32."""
        batches = [np.concatenate(self._next_pieces()) for _ in range(math.ceil(n_rows / self.batch_size))]
        return self._checked(torch.from_numpy(np.asarray(np.concatenate(batches)[:n_rows], dtype=np.float32)))

    def _checked(self, batch: torch.Tensor) -> torch.Tensor:
        """`batch` × scale, refused if it holds a NaN or Inf (a corrupt shard, an overflowed fp16)."""
        if not bool(torch.isfinite(batch).all()):
            raise ActivationShapeError(
                f"activations in {self.name} hold NaN or Inf values (epoch {self.epoch}, shard "
                f"{self.shard_pos}, near row {self.row}): fix or re-harvest them"
            )
        # Out of place: `batch` may be a view of a user's in-memory array, which must not change.
        return batch * self.scale if self.scale != 1.0 else batch

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "shard_pos": self.shard_pos,
            "row": self.row,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "n_rows": self.n_rows,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n_rows"] != self.n_rows or state["seed"] != self.seed:
            raise CheckpointError(
                f"the checkpoint was trained on other activations ({state['n_rows']} rows, "
                f"seed {state['seed']}) than {self.name} ({self.n_rows} rows, seed {self.seed})"
            )
        self.epoch, self.shard_pos, self.row = state["epoch"], state["shard_pos"], state["row"]


def _slice_pieces(pieces: list[np.ndarray], rows: slice) -> list[np.ndarray]:
    """Rows `rows` of the concatenation of `pieces`, still as views."""
    start, stop, _ = rows.indices(sum(len(p) for p in pieces))
    kept, offset = [], 0
    for piece in pieces:
        lo, hi = max(start - offset, 0), min(stop - offset, len(piece))
        if lo < hi:
            kept.append(piece[lo:hi])
        offset += len(piece)
    return kept


def _check_width(shape: tuple[int, ...], d_in: int | None, name: str) -> int:
    """The width of [n_rows, width] activations, checked against `d_in` when one is required."""
    if len(shape) != 2:
        raise ActivationShapeError(f"activations in {name} have shape {shape}; expected [n_rows, d_in]")
    if shape[0] == 0:
        raise ActivationShapeError(f"activations in {name} have no rows")
    if d_in is not None and shape[1] != d_in:
        raise ActivationShapeError(
            f"activations in {name} have width {shape[1]} but the SAE's d_in is {d_in}"
        )
    return int(shape[1])


def _read_user_file(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise ActivationShapeError(f"cannot read activations from {path}: {exc}") from exc
    if path.suffix == ".safetensors":
        try:
            tensors = load_numpy_safetensors(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ActivationShapeError(f"cannot read activations from {path}: {exc}") from exc
        if "activations" in tensors:
            return tensors["activations"]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise ActivationShapeError(f"{path} holds {len(tensors)} tensors and none is named 'activations'")
    raise ActivationShapeError(
        f"{path}: activations must be a .npy or .safetensors file or a harvest directory"
    )


def open_activation_source(path: Path, d_in: int | None, batch_size: int, seed: int = 0) -> ActivationSource:
    """A harvest directory (manifest.json + acts_*.npy shards) or a user's .npy / .safetensors file
    holding one [N, d_in] array (or a tensor named "activations"). `d_in=None` takes the width
    from the data; a given one must match it. A user's file is checked for NaN / Inf up front."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no activations at {path}")
    if path.is_dir():
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{path} has no manifest.json (run the harvest stage)")
        manifest = json.loads(manifest_path.read_text())
        if d_in is None:
            d_in = int(manifest["d_in"])
        if int(manifest["d_in"]) != d_in:
            raise ActivationShapeError(
                f"activations in {path} have width {manifest['d_in']} but the SAE's d_in is {d_in}"
            )
        files = [path / name for name in manifest["shards"]]
        shapes = []
        for file in files:
            if not file.exists():
                raise FileNotFoundError(f"activation shard {file} listed in the manifest is missing")
            shape = np.load(file, mmap_mode="r").shape
            _check_width(shape, d_in, str(file))
            shapes.append(shape)
        loaders: list[Callable[[], np.ndarray]] = [
            functools.partial(np.load, file, mmap_mode="r") for file in files
        ]
        source = ActivationSource(
            loaders, [s[0] for s in shapes], d_in, batch_size, seed, shuffle_rows=False, name=str(path)
        )
        source.recorded_model = recorded_model(manifest)
        return source
    array = _read_user_file(path)
    d_in = _check_width(tuple(array.shape), d_in, str(path))
    in_memory = np.ascontiguousarray(array)
    if not np.issubdtype(in_memory.dtype, np.number):
        raise ActivationShapeError(f"activations in {path} are {in_memory.dtype}, not numbers")
    finite = np.concatenate(
        [
            np.isfinite(chunk).all(axis=1)
            for chunk in np.array_split(in_memory, max(1, len(in_memory) // 65_536))
        ]
    )
    if not finite.all():
        raise ActivationShapeError(
            f"activations in {path} hold NaN or Inf in {int((~finite).sum())} of {len(finite)} rows "
            f"(first: row {int(np.argmin(finite))}): drop or fix them"
        )
    return ActivationSource(
        [lambda: in_memory], [len(in_memory)], d_in, batch_size, seed, shuffle_rows=True, name=str(path)
    )


def peek_rows(source: ActivationSource, n_rows: int) -> torch.Tensor:
    """The source's next `n_rows` rows (at most all of them), scaled, without moving the source:
    training goes on from where it was."""
    position = source.state_dict()
    try:
        return source.take_rows(min(n_rows, source.n_rows))
    finally:
        source.load_state_dict(position)
