"""Train a sparse autoencoder on harvested MLP activations (Bricken et al. 2023, appendix
"Autoencoder Training" / "Neuron Resampling"), plus the later variants behind `SAEConfig.variant`.

Loss, per batch of N inputs (the paper's formula):

    L = (1/N) Σ_n ‖x_n − x̂_n‖²  +  λ_t · (1/N) Σ_n ‖f_n‖₁

so "mse" here is the squared error summed over the d_in dimensions and averaged over inputs. λ_t
ramps linearly from 0 to `l1_coefficient` over the first `l1_warmup_fraction` of the steps.

  paper       unit-norm decoder rows (gradient's parallel part removed before Adam, rows renormalised
              after), neuron resampling at `resample_fractions` of the run
  l1_decnorm  L1 term Σ_i f_i ‖W_dec,i‖, no norm constraint (Anthropic, April 2024 update)
  topk        k largest latents per input; + aux_coefficient · AuxK loss (Gao et al. 2024)
  batchtopk   k·N largest latents per batch; + AuxK (Bussmann et al. 2024)
  jumprelu    learned thresholds, straight-through rectangle-kernel gradients, λ_t · L0 penalty
              (Rajamanoharan et al. 2024)

Everything that must resume lives in one checkpoint (`checkpoint.pt`), written atomically every
`checkpoint_interval` steps; `resume=True` continues bit-for-bit.

Speed: paper and topk have hand-written backwards (`PaperLossFunction`, `TopKLossFunction`): bf16
encoder matmul, and past it only the active latents are touched once activations are sparse
(always for topk). Data parallelism (`torchrun`, see trainer.distributed): each rank takes its
slice of every global batch; one all-reduce per step sums the gradients and the step's statistics.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy_safetensors
from tqdm.auto import tqdm

from trainer.checkpoint import CheckpointError, atomic_torch_save, atomic_write_text, load_training_state
from trainer.config import RunConfig, SAEConfig
from trainer.distributed import all_gather_rows, all_reduce_sum_, is_main_process, rank_rows, world_size
from trainer.sae import SparseAutoencoder, StepFunction

CHECKPOINT_FILE = "checkpoint.pt"
TRAINING_LOG_FILE = "training_log.json"
RESAMPLE_ROWS = 65_536  # inputs scored for resampling (the paper used 819,200 on a far longer run)
B_DEC_INIT_ROWS = 16_384  # inputs whose geometric median initialises b_dec
RESAMPLE_ENCODER_SCALE = 0.2  # new encoder vectors: 0.2 × mean norm of the alive ones (paper)
LOG_POINTS = 500  # about this many rows in training_log.json
# The paper's step goes sparse below this fraction of non-zero activations (break-even here ~3%).
SPARSE_BELOW = 0.02
ENCODER_BLOCK_ROWS = 256  # TopK's encoder runs in row blocks of this size (see TopKLossFunction)


class ActivationShapeError(ValueError):
    """Activations whose shape does not fit the SAE (wrong width, not 2-D, empty)."""


# ---------------------------------------------------------------------------- activation source


class ActivationSource(Iterator[torch.Tensor]):
    """Yields fp32 batches [batch_size, d_in] forever, cycling over shards.

    Each pass ("epoch") visits the shards in a seeded random order; `shuffle_rows` also permutes
    the rows of each shard per epoch (for a user's file; harvested shards are shuffled already).
    `state_dict()` is taken between batches, so a resumed run reads exactly the same batches.
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
        return torch.from_numpy(np.asarray(batch, dtype=np.float32))

    def take_rows(self, n_rows: int) -> torch.Tensor:
        """The next `n_rows` rows of whole global batches (every process gets all of them), fp32."""
        batches = [np.concatenate(self._next_pieces()) for _ in range(math.ceil(n_rows / self.batch_size))]
        return torch.from_numpy(np.asarray(np.concatenate(batches)[:n_rows], dtype=np.float32))

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


def _check_width(shape: tuple[int, ...], d_in: int, name: str) -> None:
    if len(shape) != 2:
        raise ActivationShapeError(f"activations in {name} have shape {shape}; expected [n_rows, {d_in}]")
    if shape[1] != d_in:
        raise ActivationShapeError(
            f"activations in {name} have width {shape[1]} but the SAE's d_in is {d_in}"
        )


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


def open_activation_source(path: Path, d_in: int, batch_size: int, seed: int = 0) -> ActivationSource:
    """A harvest directory (manifest.json + acts_*.npy shards) or a user's .npy / .safetensors file
    holding one [N, d_in] array (or a tensor named "activations")."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no activations at {path}")
    if path.is_dir():
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{path} has no manifest.json (run the harvest stage)")
        manifest = json.loads(manifest_path.read_text())
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
        return ActivationSource(
            loaders, [s[0] for s in shapes], d_in, batch_size, seed, shuffle_rows=False, name=str(path)
        )
    array = _read_user_file(path)
    _check_width(tuple(array.shape), d_in, str(path))
    in_memory = np.ascontiguousarray(array)
    return ActivationSource(
        [lambda: in_memory], [len(in_memory)], d_in, batch_size, seed, shuffle_rows=True, name=str(path)
    )


# ---------------------------------------------------------------------------- training state


@dataclass
class StepStats:
    step: int
    loss: float
    mse: float  # ‖x − x̂‖² summed over d_in, mean over the batch
    sparsity_loss: (
        float  # before its coefficient: L1 (paper, l1_decnorm), AuxK (topk, batchtopk), L0 (jumprelu)
    )
    l0: float  # mean number of active latents per input
    dead: int  # latents that have not fired within the dead window


@dataclass
class ResampleResult:
    step: int
    n_dead: int


@dataclass
class TrainState:
    cfg: SAEConfig
    sae: SparseAutoencoder
    optimizer: torch.optim.Optimizer
    source: ActivationSource
    generator: torch.Generator  # resampling's randomness, checkpointed
    steps_since_fired: torch.Tensor  # [d_sae] int64
    step: int = 0
    log: list[dict[str, float]] = field(default_factory=list)
    resamples: list[dict[str, int]] = field(default_factory=list)

    @property
    def dead_window(self) -> int:
        return max(1, round(self.cfg.dead_window_fraction * self.cfg.n_steps))

    @property
    def dead_mask(self) -> torch.Tensor:
        return self.steps_since_fired >= self.dead_window

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sae_config": dataclasses.asdict(self.cfg),
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "source": self.source.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "steps_since_fired": self.steps_since_fired.clone(),
            "log": list(self.log),
            "resamples": list(self.resamples),
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        saved = state.get("sae_config", {})
        mine = dataclasses.asdict(self.cfg)
        # checkpoint_interval may change between runs; nothing else may.
        changed = [
            k for k in mine if k != "checkpoint_interval" and _as_list(saved.get(k)) != _as_list(mine[k])
        ]
        if changed:
            k = changed[0]
            raise CheckpointError(
                f"checkpoint {path} is of another SAE run (sae.{k} was {saved.get(k)!r}, now "
                f"{mine[k]!r}); delete it or resume with the same settings"
            )
        try:
            self.sae.load_state_dict(state["sae"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.source.load_state_dict(state["source"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.steps_since_fired = state["steps_since_fired"].to(self.sae.W_dec.device)
        except (KeyError, RuntimeError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(
                f"checkpoint {path} does not match this SAE ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}); delete it to start over"
            ) from exc
        self.step = int(state["step"])
        self.log, self.resamples = list(state["log"]), list(state["resamples"])


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def init_train_state(
    cfg: SAEConfig, source: ActivationSource, device: torch.device | str = "cpu"
) -> TrainState:
    """A fresh SAE (b_dec at the geometric median of a data sample) with Adam and counters, on
    `device`. Every data-parallel rank builds the same one: same seed, same (global) sample."""
    torch.manual_seed(cfg.seed)
    sae = SparseAutoencoder(cfg).train()
    start = source.state_dict()
    sae.init_b_dec(source.take_rows(min(B_DEC_INIT_ROWS, source.n_rows)))
    source.load_state_dict(start)  # the sample is only peeked at: training starts at the first batch
    sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, fused=True)
    return TrainState(
        cfg=cfg,
        sae=sae,
        optimizer=optimizer,
        source=source,
        generator=torch.Generator().manual_seed(cfg.seed + 1),
        steps_since_fired=torch.zeros(cfg.d_sae, dtype=torch.long, device=sae.W_dec.device),
    )


# ---------------------------------------------------------------------------- the steps


def sparsity_coefficient(cfg: SAEConfig, step: int) -> float:
    """λ at `step` (1-based): linear warmup over the first l1_warmup_fraction of the run."""
    warmup_steps = round(cfg.l1_warmup_fraction * cfg.n_steps)
    if warmup_steps <= 0:
        return cfg.l1_coefficient
    return cfg.l1_coefficient * min(1.0, step / warmup_steps)


def auxk_loss(
    sae: SparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, aux_k: int
) -> torch.Tensor:
    """Gao et al. 2024's AuxK: the top-aux_k dead latents reconstruct the main reconstruction's error;
    the squared error is normalised by the error's variance. Zero when no latent is dead."""
    dead_idx = dead.nonzero().squeeze(1)
    if len(dead_idx) == 0:
        return pre.new_zeros((), dtype=torch.float32)
    pre_dead = pre[:, dead_idx]  # [N, n_dead]
    values, indices = torch.topk(pre_dead, min(aux_k, len(dead_idx)), dim=-1, sorted=False)
    f_dead = torch.zeros_like(pre_dead).scatter_(-1, indices, values.relu())
    residual_hat = (f_dead @ sae.W_dec[dead_idx].to(f_dead.dtype)).float()
    residual = residual.detach()
    return (residual_hat - residual).pow(2).sum(-1).mean() / batch_variance(residual)


def batch_variance(residual: torch.Tensor) -> torch.Tensor:
    """Σ‖r − mean r‖² / N over the global batch (all data-parallel ranks' rows), AuxK's normaliser."""
    n_total = residual.shape[0] * world_size()
    mean = all_reduce_sum_(residual.sum(0)) / n_total
    return (all_reduce_sum_((residual - mean).pow(2).sum()) / n_total).clamp_min(1e-12)


def _per_sample_weight_grads(
    grad_out: torch.Tensor,
    W_dec: torch.Tensor,
    latents: torch.Tensor,
    offsets: torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:
    """[E] dot products ⟨grad_out[rows[e]], W_dec[latents[e]]⟩ of the entries of a sparse code
    (grouped by row, row n's starting at offsets[n]), without gathering an [E, d_in] matrix."""
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(
        grad_out,
        W_dec,
        latents,
        offsets,
        rows,
        0,
        -1,  # mode 0: sum
    )


def _fixed_width_grads(grad_out: torch.Tensor, W_dec: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`_per_sample_weight_grads` for m latents in every row, indices [N, m]: an [N, m] result."""
    n, m = indices.shape
    rows = torch.arange(n, device=indices.device)
    offsets = rows * m
    return _per_sample_weight_grads(
        grad_out, W_dec, indices.reshape(-1), offsets, rows.repeat_interleave(m)
    ).view(n, m)


def _sum_rows_by_latent(
    latents: torch.Tensor, tables: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], d_sae: int
) -> list[torch.Tensor]:
    """For each (table [R, d_in], rows [E], weights [E]): out[c] = Σ_{e: latents[e] = c} weights[e] ·
    table[rows[e]], a [d_sae, d_in] matrix. One sort of the E (row, latent) pairs by latent serves
    every table; each is then an embedding_bag with one bag per latent."""
    order = torch.argsort(latents)
    counts = torch.bincount(latents, minlength=d_sae)
    offsets = torch.cumsum(counts, 0) - counts
    return [
        F.embedding_bag(rows[order], table, offsets, mode="sum", per_sample_weights=weights[order])
        for table, rows, weights in tables
    ]


class PaperLossFunction(torch.autograd.Function):
    """The paper's loss ‖x − x̂‖² + λ‖f‖₁ (batch means) with a hand-written backward. Inputs are the
    fp32 master weights; matmuls run in `dtype`. Returns (loss, mse, l1, f).

    While f is dense (early in training) the rest is four more matmuls and a few in-place passes
    over [N, d_sae], where autograd adds casts and copies of that size. Once fewer than
    `sparse_below` of the entries of f are non-zero (a trained SAE's L0 is ~1% of d_sae), the
    decoder and every gradient touch only those entries, as in TopKLossFunction."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        W_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor,
        l1_coefficient: float,
        dtype: torch.dtype,
        sparse_below: float,
    ) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        x_low, W_enc_low = x.to(dtype), W_enc.to(dtype)
        bias = b_enc - b_dec @ W_enc  # (x − b_dec) W_enc + b_enc = x W_enc + bias
        f = torch.addmm(bias.to(dtype), x_low, W_enc_low).relu_()  # [N, d_sae]
        ctx.sparse = int(torch.count_nonzero(f)) < sparse_below * f.numel()
        if ctx.sparse:
            nonzero = f.nonzero()  # [E, 2] (row, latent), grouped by row
            rows, latents = nonzero[:, 0], nonzero[:, 1]
            values = f[rows, latents].float()
            counts = torch.bincount(rows, minlength=n)
            offsets = torch.cumsum(counts, 0) - counts
            x_hat = F.embedding_bag(latents, W_dec, offsets, mode="sum", per_sample_weights=values)
            residual = x_hat.add_(b_dec).sub_(x)  # x̂ − x, [N, d_in]
            l1 = values.sum() / n
            ctx.save_for_backward(x, W_enc, W_dec, b_dec, rows, latents, values, offsets, residual)
        else:
            W_dec_low = W_dec.to(dtype)
            residual = torch.addmm(b_dec.to(dtype), f, W_dec_low).float().sub_(x)  # x̂ − x, [N, d_in]
            l1 = f.sum(dtype=torch.float32) / n
            ctx.save_for_backward(x_low, W_enc, W_enc_low, W_dec_low, b_dec, f, residual)
        mse = residual.pow(2).sum() / n
        ctx.l1_coefficient, ctx.n = l1_coefficient, n
        ctx.mark_non_differentiable(mse, l1, f)
        return mse + l1_coefficient * l1, mse, l1, f

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        scale = float(grad_loss) / ctx.n
        if ctx.sparse:
            return (None, *PaperLossFunction._sparse_backward(ctx, scale), None, None, None)
        x_low, W_enc, W_enc_low, W_dec_low, b_dec, f, residual = ctx.saved_tensors
        grad_x_hat = residual.mul_(2 * scale)  # [N, d_in] fp32; the residual is not needed again
        grad_x_hat_low = grad_x_hat.to(f.dtype)
        grad_W_dec = (f.T @ grad_x_hat_low).float()
        grad_f = grad_x_hat_low @ W_dec_low.T  # [N, d_sae]
        # d‖f‖₁/df = 1 where f > 0; ReLU's derivative masks the rest.
        grad_pre = grad_f.add_(ctx.l1_coefficient * scale).mul_(f > 0)
        grad_W_enc = (x_low.T @ grad_pre).float()
        grad_b_enc = grad_pre.sum(0, dtype=torch.float32)
        # bias = b_enc − b_dec W_enc: its gradient flows to b_dec and W_enc as well.
        grad_W_enc.sub_(torch.outer(b_dec, grad_b_enc))
        grad_b_dec = grad_x_hat.sum(0) - W_enc @ grad_b_enc
        return None, grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec, None, None, None

    @staticmethod
    def _sparse_backward(ctx: Any, scale: float) -> tuple[torch.Tensor, ...]:
        x, W_enc, W_dec, b_dec, rows, latents, values, offsets, residual = ctx.saved_tensors
        d_in, d_sae = W_enc.shape
        grad_x_hat = residual.mul_(2 * scale)
        # Every stored entry is > 0, so ReLU passes its gradient and d‖f‖₁/df = 1.
        grad_values = _per_sample_weight_grads(grad_x_hat, W_dec, latents, offsets, rows)
        grad_values.add_(ctx.l1_coefficient * scale)
        # pre = (x − b_dec) W_enc + b_enc, so d/dW_enc = (x − b_dec)ᵀ grad_pre.
        grad_W_dec, grad_W_enc_T = _sum_rows_by_latent(
            latents, [(grad_x_hat, rows, values), (x - b_dec, rows, grad_values)], d_sae
        )
        grad_b_enc = torch.zeros(d_sae, device=x.device).index_add_(0, latents, grad_values)
        grad_W_enc = torch.empty(d_in, d_sae, device=x.device).copy_(grad_W_enc_T.t())
        grad_b_dec = grad_x_hat.sum(0) - W_enc @ grad_b_enc
        return grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec


class TopKLossFunction(torch.autograd.Function):
    """TopK's loss ‖x − x̂‖² + α·AuxK (batch means; Gao et al. 2024) with a sparse-aware backward.

    Only the encoder matmul is dense. After it, everything touches just the k active latents of
    each row (and the aux_k dead ones of AuxK): the decoder is an embedding_bag over W_dec rows, the
    gradients of the k values come from per-row dot products, and both weight gradients are
    embedding_bags over the (row, latent) pairs sorted by latent: O(N·k·d_in), not O(N·d_sae·d_in).
    Inputs are the fp32 master weights; the encoder matmul runs in `dtype`.
    Returns (loss, mse, auxk, indices [N, k], values [N, k])."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        W_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor,
        k: int,
        dead_idx: torch.Tensor,
        aux_k: int,
        aux_coefficient: float,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        bias = (b_enc - b_dec @ W_enc).to(dtype)  # (x − b_dec) W_enc + b_enc = x W_enc + bias
        W_enc_low, n_aux = W_enc.to(dtype), min(aux_k, len(dead_idx))
        blocks: list[tuple[torch.Tensor, ...]] = []
        # Row blocks, so that each [rows, d_sae] block of pre-activations is still in cache when
        # the top-k reads it (~20% faster than one [N, d_sae] matmul, then one top-k).
        for x_block in x.to(dtype).split(ENCODER_BLOCK_ROWS):
            pre = torch.addmm(bias, x_block, W_enc_low)  # [rows, d_sae]
            block = tuple(torch.topk(pre, k, dim=-1, sorted=False))
            if n_aux > 0:  # AuxK: the top aux_k of the dead latents
                block += tuple(torch.topk(pre.index_select(1, dead_idx), n_aux, dim=-1, sorted=False))
            blocks.append(block)
        values = torch.cat([b[0] for b in blocks]).float().relu_()
        indices = torch.cat([b[1] for b in blocks])
        x_hat = F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")
        residual = x_hat.add_(b_dec).sub_(x)  # x̂ − x, [N, d_in]
        mse = residual.pow(2).sum() / n
        aux_indices = indices.new_zeros((n, 0))
        aux_values = values.new_zeros((n, 0))
        aux_error, variance, auxk = residual.new_zeros((n, 0)), 1.0, residual.new_zeros(())
        if n_aux > 0:
            # The dead latents reconstruct the main error x − x̂ (a constant here).
            aux_values = torch.cat([b[2] for b in blocks]).float().relu_()
            aux_indices = dead_idx[torch.cat([b[3] for b in blocks])]
            variance_t = batch_variance(residual)
            aux_error = F.embedding_bag(aux_indices, W_dec, per_sample_weights=aux_values, mode="sum")
            aux_error.add_(residual)  # r̂ − (x − x̂)
            auxk, variance = aux_error.pow(2).sum() / n / variance_t, float(variance_t)
        ctx.save_for_backward(
            x, W_enc, W_dec, b_dec, indices, values, residual, aux_indices, aux_values, aux_error
        )
        ctx.aux_scale, ctx.n = aux_coefficient / variance, n
        ctx.mark_non_differentiable(mse, auxk, indices, values)
        return mse + aux_coefficient * auxk, mse, auxk, indices, values

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        x, W_enc, W_dec, b_dec, indices, values, residual, aux_indices, aux_values, aux_error = (
            ctx.saved_tensors
        )
        n, k = indices.shape
        d_in, d_sae = W_enc.shape
        scale = 2 * float(grad_loss) / ctx.n
        grad_x_hat = residual.mul_(scale)  # [N, d_in]; the residual is not needed again
        grad_aux = aux_error.mul_(scale * ctx.aux_scale)  # [N, d_in] or [N, 0]
        # d/d(value) of Σ_j value_j W_dec[idx_j]; ReLU's derivative masks the zeros.
        grad_values = _fixed_width_grads(grad_x_hat, W_dec, indices).mul_(values > 0)
        rows = torch.arange(n, device=x.device)
        latents, row_of, weights_dec, grad_pre = (
            [indices.reshape(-1)],
            [rows.repeat_interleave(k)],
            [values.reshape(-1)],
            [grad_values.reshape(-1)],
        )
        table = grad_x_hat
        if aux_indices.shape[1] > 0:
            n_aux = aux_indices.shape[1]
            grad_aux_values = _fixed_width_grads(grad_aux, W_dec, aux_indices).mul_(aux_values > 0)
            latents.append(aux_indices.reshape(-1))
            row_of.append(rows.repeat_interleave(n_aux))
            weights_dec.append(aux_values.reshape(-1))
            grad_pre.append(grad_aux_values.reshape(-1))
            table = torch.cat([grad_x_hat, grad_aux])
        n_main = n * k
        all_latents, all_rows = torch.cat(latents), torch.cat(row_of)
        dec_rows = all_rows.clone()
        dec_rows[n_main:] += n  # aux entries read the second half of `table`
        all_grad_pre = torch.cat(grad_pre)
        # pre = (x − b_dec) W_enc + b_enc, so d/dW_enc = (x − b_dec)ᵀ grad_pre: a sum of centred rows.
        grad_W_dec, grad_W_enc_T = _sum_rows_by_latent(
            all_latents,
            [(table, dec_rows, torch.cat(weights_dec)), (x - b_dec, all_rows, all_grad_pre)],
            d_sae,
        )
        grad_b_enc = torch.zeros(d_sae, device=x.device).index_add_(0, all_latents, all_grad_pre)
        grad_W_enc = torch.empty(d_in, d_sae, device=x.device).copy_(grad_W_enc_T.t())
        grad_b_dec = grad_x_hat.sum(0) - W_enc @ grad_b_enc
        return None, grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec, None, None, None, None, None


def keeps_unit_norm_decoder(cfg: SAEConfig) -> bool:
    return cfg.variant != "l1_decnorm"


@dataclass
class LossTerms:
    loss: torch.Tensor
    mse: torch.Tensor
    sparsity: torch.Tensor
    fired: torch.Tensor  # [d_sae] float: 1 where the latent fired on this process's rows
    active: torch.Tensor | None  # number of (row, latent) activations, when counted


def variant_loss(state: TrainState, x: torch.Tensor, step: int) -> tuple[torch.Tensor, ...]:
    """(loss, mse, sparsity term, f) through autograd, for every variant (the reference path)."""
    cfg, sae = state.cfg, state.sae
    n = x.shape[0]
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16"):
        pre = sae.pre_activations(x)  # [N, d_sae]
        f = sae.activate(pre)
        x_hat = sae.decode(f)
        residual = x - x_hat.float()
        mse = residual.pow(2).sum(-1).mean()
        if cfg.variant == "paper":
            sparsity = f.sum(dtype=torch.float32) / n  # f >= 0, so this is ‖f‖₁
            loss = mse + sparsity_coefficient(cfg, step) * sparsity
        elif cfg.variant == "l1_decnorm":
            sparsity = (f @ sae.W_dec.norm(dim=1).to(f.dtype)).sum(dtype=torch.float32) / n
            loss = mse + sparsity_coefficient(cfg, step) * sparsity
        elif cfg.variant in ("topk", "batchtopk"):
            sparsity = auxk_loss(sae, pre, residual, state.dead_mask, cfg.aux_k)
            loss = mse + cfg.aux_coefficient * sparsity
        else:  # jumprelu: L0 through the step function's straight-through estimator
            l0_term = StepFunction.apply(pre, sae.log_threshold.exp(), cfg.jumprelu_bandwidth)
            sparsity = l0_term.sum(dtype=torch.float32) / n
            loss = mse + sparsity_coefficient(cfg, step) * sparsity
    return loss, mse, sparsity, f


def loss_terms(state: TrainState, x: torch.Tensor, step: int, count_active: bool) -> LossTerms:
    """The step's loss: the hand-written fast paths for paper and topk, autograd for the others."""
    cfg, sae = state.cfg, state.sae
    low = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    if cfg.variant == "topk":
        dead_idx = state.dead_mask.nonzero().squeeze(1)
        loss, mse, sparsity, indices, values = TopKLossFunction.apply(
            x,
            sae.W_enc,
            sae.W_dec,
            sae.b_enc,
            sae.b_dec,
            cfg.k,
            dead_idx,
            cfg.aux_k,
            cfg.aux_coefficient,
            low,
        )
        active = values > 0
        fired = torch.zeros(cfg.d_sae, device=x.device).index_fill_(0, indices[active], 1.0)
        return LossTerms(loss, mse, sparsity, fired, active.sum().float())
    if cfg.variant == "paper":  # the recipe we reproduce
        loss, mse, sparsity, f = PaperLossFunction.apply(
            x, sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, sparsity_coefficient(cfg, step), low, SPARSE_BELOW
        )
    else:
        loss, mse, sparsity, f = variant_loss(state, x, step)
    f = f.detach()
    active = (f > 0).sum().float() if count_active else None
    return LossTerms(loss, mse, sparsity, (f.amax(0) > 0).float(), active)


def all_reduce_step(sae: SparseAutoencoder, stats: torch.Tensor) -> torch.Tensor:
    """Data parallelism: average the gradients over the ranks and sum `stats`, in one all-reduce
    of one flat buffer (a handful of tensors; bucketing and overlap buy nothing on a CPU)."""
    size = world_size()
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [stats])
    all_reduce_sum_(flat)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad)).div_(size)
        offset += grad.numel()
    return flat[offset:]


def train_step(state: TrainState, x: torch.Tensor, compute_l0: bool = True) -> StepStats:
    """One Adam step on the batch x [N, d_in] (this process's rows of it under data parallelism);
    updates the fired-recently counters."""
    cfg, sae = state.cfg, state.sae
    step = state.step + 1
    terms = loss_terms(state, x, step, count_active=compute_l0)
    state.optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    # [loss, mse, sparsity, active, fired...]: summed over the ranks with the gradients.
    active = terms.active if terms.active is not None else terms.loss.new_zeros(())
    stats = torch.cat(
        [torch.stack([terms.loss, terms.mse, terms.sparsity, active]).detach().float(), terms.fired]
    )
    size = world_size()
    if size > 1:
        stats = all_reduce_step(sae, stats)
        stats[:3] /= size
    if keeps_unit_norm_decoder(cfg):
        sae.remove_parallel_decoder_grad()
    state.optimizer.step()
    if keeps_unit_norm_decoder(cfg):
        sae.normalize_decoder()
    with torch.no_grad():
        fired = stats[4:] > 0
        state.steps_since_fired = torch.where(fired, 0, state.steps_since_fired + 1)
    loss, mse, sparsity, n_active = stats[:4].tolist()
    state.step = step
    return StepStats(
        step=step,
        loss=loss,
        mse=mse,
        sparsity_loss=sparsity,
        l0=n_active / (x.shape[0] * size) if compute_l0 else float("nan"),
        dead=int(state.dead_mask.sum()),
    )


def resample_steps(cfg: SAEConfig) -> set[int]:
    if cfg.variant != "paper":
        return set()
    return {round(fraction * cfg.n_steps) for fraction in cfg.resample_fractions}


@torch.no_grad()
def resample_dead_latents(state: TrainState, n_rows: int = RESAMPLE_ROWS) -> ResampleResult:
    """Towards Monosemanticity, appendix "Neuron Resampling": dead latents get the direction of an
    input the SAE reconstructs badly (drawn with probability ∝ loss²), their encoder vector that
    direction × 0.2 × the mean alive encoder norm, b_enc 0, and fresh Adam moments.

    "Input" is taken as the SAE sees it, x − b_dec, so the new latent fires on the input it was
    drawn from (a raw MLP activation is all-positive and mostly its mean). Under data parallelism
    every rank reads the same rows, scores its share, and all draw from the gathered losses with
    the same generator, so all make the same choice."""
    sae, dead = state.sae, state.dead_mask
    dead_idx = dead.nonzero().squeeze(1)
    state.resamples.append({"step": state.step, "n_dead": len(dead_idx)})
    if len(dead_idx) == 0:
        return ResampleResult(step=state.step, n_dead=0)
    n_rows = min(n_rows, max(state.source.n_rows, state.cfg.batch_size))
    x = state.source.take_rows(n_rows - n_rows % world_size())  # [n_rows, d_in], on the CPU
    mine = x[rank_rows(len(x))].to(sae.W_dec.device)
    was_training = sae.training
    sae.eval()
    losses = torch.cat([(sae(chunk)[0] - chunk).pow(2).sum(-1) for chunk in mine.split(8192)])
    sae.train(was_training)
    weights = all_gather_rows(losses).pow(2).cpu()  # [n_rows]
    if not bool(weights.sum() > 0):
        weights = torch.ones_like(weights)
    picks = torch.multinomial(
        weights, len(dead_idx), replacement=len(dead_idx) > len(x), generator=state.generator
    )
    directions = x[picks].to(sae.b_dec.device) - sae.b_dec
    directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-8)  # [n_dead, d_in]
    alive_norms = sae.W_enc[:, ~dead].norm(dim=0)
    scale = RESAMPLE_ENCODER_SCALE * (float(alive_norms.mean()) if len(alive_norms) else 1.0)
    sae.W_dec[dead_idx] = directions
    sae.W_enc[:, dead_idx] = directions.T * scale
    sae.b_enc[dead_idx] = 0.0
    for param, index in (
        (sae.W_dec, (dead_idx,)),
        (sae.W_enc, (slice(None), dead_idx)),
        (sae.b_enc, (dead_idx,)),
    ):
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in state.optimizer.state.get(param, {}):
                state.optimizer.state[param][moment][index] = 0.0
    state.steps_since_fired[dead_idx] = 0
    return ResampleResult(step=state.step, n_dead=len(dead_idx))


def maybe_resample(state: TrainState) -> ResampleResult | None:
    if state.step in resample_steps(state.cfg):
        return resample_dead_latents(state)
    return None


def maybe_checkpoint(state: TrainState, path: Path, force: bool = False) -> bool:
    """Write the checkpoint at its interval and at the end (rank 0 only: the ranks are in step)."""
    if not is_main_process():
        return False
    if force or state.step % state.cfg.checkpoint_interval == 0 or state.step == state.cfg.n_steps:
        atomic_torch_save(state.state_dict(), path)
        return True
    return False


# ---------------------------------------------------------------------------- the loop


@dataclass
class TrainSAEResult:
    sae: SparseAutoencoder
    n_steps: int
    final: StepStats | None  # None when a finished run was resumed
    log: list[dict[str, float]]
    resamples: list[dict[str, int]]
    out_dir: Path


def _log_row(stats: StepStats) -> dict[str, float]:
    return {
        "step": stats.step,
        "loss": stats.loss,
        "mse": stats.mse,
        "sparsity_loss": stats.sparsity_loss,
        "l0": stats.l0,
        "dead": stats.dead,
    }


SPARSITY_LOSS_NAME = {
    "paper": "l1",
    "l1_decnorm": "l1_decnorm",
    "topk": "auxk",
    "batchtopk": "auxk",
    "jumprelu": "l0",
}


def write_training_log(state: TrainState, out_dir: Path) -> None:
    payload = {
        "variant": state.cfg.variant,
        "sparsity_loss": SPARSITY_LOSS_NAME[state.cfg.variant],
        "mse": "squared error summed over d_in, mean over the batch",
        "rows": state.log,
        "resamples": state.resamples,
    }
    atomic_write_text(out_dir / TRAINING_LOG_FILE, json.dumps(payload, indent=1))


def train_sae(
    cfg: RunConfig | SAEConfig,
    activations: ActivationSource | Path | str,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[TrainState, StepStats], None] | None = None,
    model_name: str = "monosemantic-1l",
    device: torch.device | str | None = None,
) -> TrainSAEResult:
    """Train to `cfg.n_steps`, checkpointing into out_dir; save the SAE (SAELens layout) and
    training_log.json there. `resume=True` continues from out_dir/checkpoint.pt if it exists.

    On `device` (default: a RunConfig's `device`, else the CPU). Inside a torch.distributed process
    group (`trainer.distributed.init_from_env`) each rank trains on its slice of every global batch
    of `batch_size` rows and only rank 0 writes files; the result is the single-process one."""
    sae_cfg = cfg.sae if isinstance(cfg, RunConfig) else cfg
    if device is None:
        device = cfg.device if isinstance(cfg, RunConfig) else "cpu"
    context_size = cfg.model.n_ctx if isinstance(cfg, RunConfig) else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = (
        activations
        if isinstance(activations, ActivationSource)
        else open_activation_source(Path(activations), sae_cfg.d_in, sae_cfg.batch_size, sae_cfg.seed)
    )
    source.local_rows = rank_rows(sae_cfg.batch_size)
    state = init_train_state(sae_cfg, source, device)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    if resume and checkpoint_path.exists():
        state.load_state_dict(load_training_state(checkpoint_path), checkpoint_path)

    n_steps = sae_cfg.n_steps
    log_every = max(1, n_steps // LOG_POINTS)
    final: StepStats | None = None
    bar = tqdm(
        total=n_steps,
        initial=state.step,
        disable=not progress or not is_main_process(),
        desc=f"sae {sae_cfg.variant}",
        unit="step",
        dynamic_ncols=True,
    )
    while state.step < n_steps:
        is_log_step = (state.step + 1) % log_every == 0 or state.step + 1 == n_steps
        x = next(source).to(device, non_blocking=True)
        final = train_step(state, x, compute_l0=is_log_step)
        if maybe_resample(state) is not None:
            final.dead = int(state.dead_mask.sum())
        if is_log_step:
            state.log.append(_log_row(final))
            bar.set_postfix(loss=f"{final.loss:.4g}", l0=f"{final.l0:.1f}", dead=final.dead, refresh=False)
        maybe_checkpoint(state, checkpoint_path)
        bar.update(1)
        if on_step is not None:
            on_step(state, final)
    bar.close()
    state.sae.eval()
    if is_main_process():
        state.sae.save(out_dir, model_name=model_name, context_size=context_size)
        write_training_log(state, out_dir)
    return TrainSAEResult(
        sae=state.sae, n_steps=n_steps, final=final, log=state.log, resamples=state.resamples, out_dir=out_dir
    )
