"""Everything a training run carries from step to step, as one `state_dict` for the checkpoint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import CheckpointError
from trainer.config import SAEConfig
from trainer.sae.autoencoder import SparseAutoencoder
from trainer.sae.source import ActivationShapeError, ActivationSource, peek_rows
from trainer.sae.variants import peak_lr

B_DEC_INIT_ROWS = 16_384  # inputs whose geometric median initialises b_dec


@dataclass
class StepStats:
    step: int
    loss: float
    mse: float  # ‖x − x̂‖² summed over d_in, mean over the batch
    sparsity_loss: float  # before its coefficient; which one is Variant.sparsity_loss_name
    l0: float  # mean number of active latents per input
    dead: int  # latents that have not fired within the dead window
    sparsity_coefficient: float = 0.0  # λ_t (AuxK's α for topk / batchtopk)
    lr: float = 0.0


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
    input_scale: float = 1.0  # batches are x · input_scale (SAEConfig.normalize_activations)
    log_l1_factor: float = 0.0  # λ = l1_coefficient · e^this, moved by the target-L0 controller
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
            "input_scale": self.input_scale,
            "log_l1_factor": self.log_l1_factor,
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
        self.input_scale = float(state.get("input_scale", 1.0))
        self.source.scale = self.input_scale
        self.log_l1_factor = float(state.get("log_l1_factor", 0.0))
        self.log, self.resamples = list(state["log"]), list(state["resamples"])


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def init_train_state(
    cfg: SAEConfig, source: ActivationSource, device: torch.device | str = "cpu"
) -> TrainState:
    """A fresh SAE (b_dec at the geometric median of a data sample) with Adam and counters, on
    `device`, and the source set to scale its batches (`input_scale`). Every data-parallel rank
    builds the same one: same seed, same (global) sample."""
    torch.manual_seed(cfg.seed)
    sae = SparseAutoencoder(cfg).train()
    source.scale = 1.0
    sample = peek_rows(source, B_DEC_INIT_ROWS)  # [rows, d_in]; training starts at the first batch
    input_scale = 1.0
    if cfg.normalize_activations:
        mean_norm = float(sample.norm(dim=1).mean())
        if not mean_norm > 0:
            raise ActivationShapeError(f"activations in {source.name} are all zero: nothing to learn")
        input_scale = math.sqrt(cfg.d_in) / mean_norm
    source.scale = input_scale
    sae.init_b_dec(sample * input_scale)
    sae.to(device)
    optimizer = torch.optim.Adam(sae.variant.param_groups(sae), lr=peak_lr(cfg), fused=True)
    return TrainState(
        cfg=cfg,
        sae=sae,
        optimizer=optimizer,
        source=source,
        generator=torch.Generator().manual_seed(cfg.seed + 1),
        steps_since_fired=torch.zeros(cfg.d_sae, dtype=torch.long, device=sae.W_dec.device),
        input_scale=input_scale,
    )
