"""What an SAE variant defines, and the autograd loss every variant can fall back on.

The SAE of Bricken et al. 2023 ("Problem Setup" / "Sparse Autoencoder"):

    x̄ = x − b_dec;   f = σ(x̄ W_enc + b_enc);   x̂ = f W_dec + b_dec

A variant chooses the activation σ and the sparsity term S of the loss, per batch of N inputs:

    L = (1/N) Σ_n ‖x_n − x̂_n‖²  +  λ_t · S(f)

so "mse" is the squared error summed over the d_in dimensions and averaged over inputs. λ_t is
`l1_coefficient` ramped linearly from 0 over the first `l1_warmup_fraction` of the steps (the paper's
warmup) for the variants with `uses_sparsity_coefficient`, else the constant `aux_coefficient` (AuxK).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from trainer.config import SAEConfig

if TYPE_CHECKING:
    from trainer.sae.autoencoder import SparseAutoencoder
    from trainer.sae.state import TrainState


@dataclass
class LossTerms:
    loss: torch.Tensor
    mse: torch.Tensor
    sparsity: torch.Tensor
    fired: torch.Tensor  # [d_sae] float: 1 where the latent fired on this process's rows
    active: torch.Tensor | None  # number of (row, latent) activations, when counted
    # (dead_idx, shortfall): b_enc raises that revive dead latents after the step (trainer.sae.revive)
    revive: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_codes(
        cls,
        loss: torch.Tensor,
        mse: torch.Tensor,
        sparsity: torch.Tensor,
        f: torch.Tensor,
        count_active: bool,
    ) -> LossTerms:
        """The terms of a step whose feature activations f [N, d_sae] are dense."""
        f = f.detach()
        active = (f > 0).sum().float() if count_active else None
        return cls(loss, mse, sparsity, (f.amax(0) > 0).float(), active)

    @classmethod
    def from_counts(
        cls, loss: torch.Tensor, mse: torch.Tensor, sparsity: torch.Tensor, counts: torch.Tensor
    ) -> LossTerms:
        """The terms of a step from how many rows each latent fired on, counts [d_sae]."""
        counts = counts.detach()
        return cls(loss, mse, sparsity, (counts > 0).float(), counts.sum())


def sparsity_coefficient(cfg: SAEConfig, step: int, log_factor: float = 0.0) -> float:
    """λ at `step` (1-based): l1_coefficient · e^log_factor (the target-L0 controller's factor),
    ramped linearly from 0 over the first l1_warmup_fraction of the run."""
    coefficient = cfg.l1_coefficient * math.exp(log_factor)
    warmup_steps = round(cfg.l1_warmup_fraction * cfg.n_steps)
    if warmup_steps <= 0:
        return coefficient
    return coefficient * min(1.0, step / warmup_steps)


def compute_dtype(cfg: SAEConfig) -> torch.dtype:
    """The dtype of the hand-written backwards' matmuls (their master weights stay fp32)."""
    return torch.bfloat16 if cfg.dtype == "bf16" else torch.float32


class Variant:
    """One SAE architecture and its training loss. Subclasses set the class attributes and
    `activate` / `sparsity_loss`; the other methods have defaults that fit most of them."""

    name: ClassVar[str]  # SAEConfig.variant
    saelens_architecture: ClassVar[str]  # SAELens's name for the saved inference SAE
    saelens_activation_fn: ClassVar[str] = "relu"  # cfg.json's activation_fn_str
    sparsity_loss_name: ClassVar[str]  # what StepStats.sparsity_loss is, in training_log.json
    unit_norm_decoder: ClassVar[bool] = True  # W_dec rows kept at unit norm through training
    # Dead latents are resampled after these fractions of the run (SAEConfig.resample_fractions),
    # their encoder vectors this × the mean alive norm (SAEConfig.resample_encoder_scale).
    default_resample_fractions: ClassVar[tuple[float, ...]] = ()
    default_resample_encoder_scale: ClassVar[float] = 0.2
    resample_takes_rows: ClassVar[bool] = False  # the rows scored are skipped by training (paper)
    uses_sparsity_coefficient: ClassVar[bool] = True  # λ_t is l1_coefficient (else aux_coefficient)
    # The encoder's initial scale relative to the decoder's transpose (SAEConfig.init_norm).
    default_init_norm: ClassVar[float] = 0.1
    # Adam's peak lr (SAEConfig.lr). 3e-3: with a long λ warm-up the L1-style variants find planted
    # directions in ~1,000 steps that 1e-3 leaves at 0.8 mean max cosine.
    default_lr: ClassVar[float] = 3e-3

    # ------------------------------------------------------------------ the SAE module

    def param_groups(self, sae: SparseAutoencoder) -> list[dict[str, Any]]:
        """Adam's parameter groups; a group's "lr_scale" multiplies the scheduled lr."""
        return [{"params": list(sae.parameters())}]

    def add_parameters(self, sae: SparseAutoencoder) -> None:
        """Register the variant's parameters beyond W_enc, W_dec, b_enc, b_dec (none by default)."""

    def activate(self, sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations f [N, d_sae] from the pre-activations [N, d_sae]."""
        raise NotImplementedError

    def threshold(self, sae: SparseAutoencoder) -> torch.Tensor | None:
        """The per-latent threshold [d_sae] saved with the weights, if the variant has one."""
        return None

    def load_threshold(self, sae: SparseAutoencoder, threshold: torch.Tensor) -> None:
        """Set the state behind `threshold(sae)` from a saved fp32 threshold [d_sae]."""
        raise NotImplementedError(f"SAE variant {self.name!r} has no threshold")

    def saelens_fields(self, cfg: SAEConfig) -> dict[str, Any]:
        """Extra fields of the saved cfg.json."""
        return {}

    # ------------------------------------------------------------------ training

    def sparsity_loss(
        self, state: TrainState, pre: torch.Tensor, f: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """S, the sparsity term before its coefficient (fp32 scalar), from the pre-activations and
        activations [N, d_sae] and the reconstruction error x − x̂ [N, d_in]."""
        raise NotImplementedError

    def auxiliary_loss(self, state: TrainState, pre: torch.Tensor) -> torch.Tensor | float:
        """A further term of the loss, from the pre-activations [N, d_sae] (none by default)."""
        return 0.0

    def sparsity_weight(self, state: TrainState, step: int) -> float:
        """λ_t, the coefficient of the sparsity term at `step` (1-based)."""
        if not self.uses_sparsity_coefficient:
            return state.cfg.aux_coefficient
        return sparsity_coefficient(state.cfg, step, state.log_l1_factor)

    def reference_loss(
        self, state: TrainState, x: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, mse, sparsity term, f) through autograd: the reference the fast paths are tested on."""
        cfg, sae = state.cfg, state.sae
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16"):
            pre = sae.pre_activations(x)  # [N, d_sae]
            f = self.activate(sae, pre)
            x_hat = sae.decode(f)
            residual = x - x_hat.float()
            mse = residual.pow(2).sum(-1).mean()
            sparsity = self.sparsity_loss(state, pre, f, residual)
            loss = mse + self.sparsity_weight(state, step) * sparsity + self.auxiliary_loss(state, pre)
        return loss, mse, sparsity, f

    def resample_extra(
        self, sae: SparseAutoencoder, dead_idx: torch.Tensor, dead: torch.Tensor
    ) -> list[tuple[torch.Tensor, tuple[Any, ...]]]:
        """Reset the variant's own parameters of the resampled latents dead_idx (dead [d_sae] the
        mask); returns the (parameter, index) pairs whose Adam moments are to be cleared."""
        return []

    def finish_training(self, state: TrainState) -> None:
        """After the last step, on the training's (normalised) units: settle whatever inference
        reads that training only estimated (nothing by default)."""

    def loss_terms(self, state: TrainState, x: torch.Tensor, step: int, count_active: bool) -> LossTerms:
        """The step's loss on x [N, d_in], ready for `backward()`; a variant with a hand-written
        backward overrides this, the others train through `reference_loss`."""
        loss, mse, sparsity, f = self.reference_loss(state, x, step)
        return LossTerms.from_codes(loss, mse, sparsity, f, count_active)
