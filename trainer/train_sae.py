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
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy_safetensors
from tqdm.auto import tqdm

from trainer.checkpoint import CheckpointError, atomic_torch_save, atomic_write_text, load_training_state
from trainer.config import RunConfig, SAEConfig
from trainer.sae import SparseAutoencoder, StepFunction

CHECKPOINT_FILE = "checkpoint.pt"
TRAINING_LOG_FILE = "training_log.json"
RESAMPLE_ROWS = 65_536  # inputs scored for resampling (the paper used 819,200 on a far longer run)
B_DEC_INIT_ROWS = 16_384  # inputs whose geometric median initialises b_dec
RESAMPLE_ENCODER_SCALE = 0.2  # new encoder vectors: 0.2 × mean norm of the alive ones (paper)
LOG_POINTS = 500  # about this many rows in training_log.json


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

    def __next__(self) -> torch.Tensor:
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
        batch = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        return torch.from_numpy(np.asarray(batch, dtype=np.float32))

    def take_rows(self, n_rows: int) -> torch.Tensor:
        """The next `n_rows` rows (whole batches, then trimmed) as one fp32 tensor."""
        batches = [next(self) for _ in range(math.ceil(n_rows / self.batch_size))]
        return torch.cat(batches)[:n_rows]

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
            self.steps_since_fired = state["steps_since_fired"].clone()
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


def init_train_state(cfg: SAEConfig, source: ActivationSource) -> TrainState:
    """A fresh SAE (b_dec at the geometric median of a data sample) with Adam and counters."""
    torch.manual_seed(cfg.seed)
    sae = SparseAutoencoder(cfg).train()
    start = source.state_dict()
    sae.init_b_dec(source.take_rows(min(B_DEC_INIT_ROWS, source.n_rows)))
    source.load_state_dict(start)  # the sample is only peeked at: training starts at the first batch
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, fused=True)
    return TrainState(
        cfg=cfg,
        sae=sae,
        optimizer=optimizer,
        source=source,
        generator=torch.Generator().manual_seed(cfg.seed + 1),
        steps_since_fired=torch.zeros(cfg.d_sae, dtype=torch.long),
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
    variance = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (residual_hat - residual).pow(2).sum(-1).mean() / variance


class PaperLossFunction(torch.autograd.Function):
    """The paper's loss ‖x − x̂‖² + λ‖f‖₁ (batch means) with a hand-written backward: five matmuls
    and a few in-place passes over [N, d_sae], where autograd adds casts and copies of that size.
    Inputs are the fp32 master weights; matmuls run in `dtype`. Returns (loss, mse, l1, f)."""

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
    ) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        x_low, W_enc_low, W_dec_low = x.to(dtype), W_enc.to(dtype), W_dec.to(dtype)
        bias = b_enc - b_dec @ W_enc  # (x − b_dec) W_enc + b_enc = x W_enc + bias
        f = torch.addmm(bias.to(dtype), x_low, W_enc_low).relu_()  # [N, d_sae]
        residual = torch.addmm(b_dec.to(dtype), f, W_dec_low).float().sub_(x)  # x̂ − x, [N, d_in]
        mse = residual.pow(2).sum() / n
        l1 = f.sum(dtype=torch.float32) / n
        ctx.save_for_backward(x_low, W_enc, W_enc_low, W_dec_low, b_dec, f, residual)
        ctx.l1_coefficient, ctx.n = l1_coefficient, n
        ctx.mark_non_differentiable(mse, l1, f)
        return mse + l1_coefficient * l1, mse, l1, f

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        x_low, W_enc, W_enc_low, W_dec_low, b_dec, f, residual = ctx.saved_tensors
        scale = float(grad_loss) / ctx.n
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
        return None, grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec, None, None


def keeps_unit_norm_decoder(cfg: SAEConfig) -> bool:
    return cfg.variant != "l1_decnorm"


def variant_loss(state: TrainState, x: torch.Tensor, step: int) -> tuple[torch.Tensor, ...]:
    """(loss, mse, sparsity term, f) through autograd, for every variant (the reference path)."""
    cfg, sae = state.cfg, state.sae
    n = x.shape[0]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.dtype == "bf16"):
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


def train_step(state: TrainState, x: torch.Tensor, compute_l0: bool = True) -> StepStats:
    """One Adam step on the batch x [N, d_in]; updates the fired-recently counters."""
    cfg, sae = state.cfg, state.sae
    step = state.step + 1
    n = x.shape[0]
    if cfg.variant == "paper":  # the recipe we reproduce gets the hand-fused fast path
        low = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
        loss, mse, sparsity, f = PaperLossFunction.apply(
            x, sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, sparsity_coefficient(cfg, step), low
        )
    else:
        loss, mse, sparsity, f = variant_loss(state, x, step)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if keeps_unit_norm_decoder(cfg):
        sae.remove_parallel_decoder_grad()
    state.optimizer.step()
    if keeps_unit_norm_decoder(cfg):
        sae.normalize_decoder()
    with torch.no_grad():
        fired = f.detach().amax(0) > 0
        state.steps_since_fired = torch.where(fired, 0, state.steps_since_fired + 1)
        l0 = float((f.detach() > 0).sum()) / n if compute_l0 else float("nan")
    state.step = step
    return StepStats(
        step=step,
        loss=float(loss.detach()),
        mse=float(mse.detach()),
        sparsity_loss=float(sparsity.detach()),
        l0=l0,
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
    drawn from (a raw MLP activation is all-positive and mostly its mean)."""
    sae, dead = state.sae, state.dead_mask
    dead_idx = dead.nonzero().squeeze(1)
    state.resamples.append({"step": state.step, "n_dead": len(dead_idx)})
    if len(dead_idx) == 0:
        return ResampleResult(step=state.step, n_dead=0)
    x = state.source.take_rows(min(n_rows, max(state.source.n_rows, state.cfg.batch_size)))
    was_training = sae.training
    sae.eval()
    losses = torch.cat([(sae(chunk)[0] - chunk).pow(2).sum(-1) for chunk in x.split(8192)])  # [n_rows]
    sae.train(was_training)
    weights = losses.pow(2)
    if not bool(weights.sum() > 0):
        weights = torch.ones_like(weights)
    picks = torch.multinomial(
        weights, len(dead_idx), replacement=len(dead_idx) > len(x), generator=state.generator
    )
    directions = x[picks] - sae.b_dec
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
) -> TrainSAEResult:
    """Train to `cfg.n_steps`, checkpointing into out_dir; save the SAE (SAELens layout) and
    training_log.json there. `resume=True` continues from out_dir/checkpoint.pt if it exists."""
    sae_cfg = cfg.sae if isinstance(cfg, RunConfig) else cfg
    context_size = cfg.model.n_ctx if isinstance(cfg, RunConfig) else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = (
        activations
        if isinstance(activations, ActivationSource)
        else open_activation_source(Path(activations), sae_cfg.d_in, sae_cfg.batch_size, sae_cfg.seed)
    )
    state = init_train_state(sae_cfg, source)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    if resume and checkpoint_path.exists():
        state.load_state_dict(load_training_state(checkpoint_path), checkpoint_path)

    n_steps = sae_cfg.n_steps
    log_every = max(1, n_steps // LOG_POINTS)
    final: StepStats | None = None
    bar = tqdm(
        total=n_steps,
        initial=state.step,
        disable=not progress,
        desc=f"sae {sae_cfg.variant}",
        unit="step",
        dynamic_ncols=True,
    )
    while state.step < n_steps:
        is_log_step = (state.step + 1) % log_every == 0 or state.step + 1 == n_steps
        final = train_step(state, next(source), compute_l0=is_log_step)
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
    state.sae.save(out_dir, model_name=model_name, context_size=context_size)
    write_training_log(state, out_dir)
    return TrainSAEResult(
        sae=state.sae, n_steps=n_steps, final=final, log=state.log, resamples=state.resamples, out_dir=out_dir
    )
