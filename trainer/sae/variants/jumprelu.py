"""jumprelu: Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders".

    f = pre · 1[pre > θ],  θ > 0 a learned threshold per latent (kept as log θ)
    L = (1/N) Σ_n ‖x_n − x̂_n‖² + λ_t · (1/N) Σ_n ‖f_n‖₀

plus, on the latents that are dead (silent for the dead window), Anthropic's pre-activation loss
(Circuits Updates, January 2025) `jumprelu_preact_coefficient` · (1/N) Σ_n Σ_dead relu(θ − pre),
which pulls a silent latent's pre-activations up to its threshold (and θ down) until it fires.

The step function has no gradient in θ, so both JumpReLU and the L0 term pass straight-through
estimates to θ through a rectangle kernel of width ε = `jumprelu_bandwidth` (their eq. 11).

Speed: a hand-written sparse backward (`JumpReLULossFunction`). Past the bf16 encoder matmul it
touches only the pre-activations above θ − ε/2: the active ones (the decoder and the weights'
gradients) and those within ε/2 of θ (the only ones the rectangle kernel passes to θ).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.sae.sparse_ops import (
    ENCODER_BLOCK_ROWS,
    encode_blocks,
    per_sample_weight_grads,
    row_offsets,
    sparse_parameter_grads,
)
from trainer.sae.variants.base import LossTerms, Variant, compute_dtype

if TYPE_CHECKING:
    from trainer.sae.autoencoder import SparseAutoencoder
    from trainer.sae.state import TrainState


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel 1[|u| < 1/2] of Rajamanoharan et al. 2024, eq. 11."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """pre · 1[pre > θ]; d/dθ by the straight-through estimator −(θ/ε)·K((pre−θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        kernel = rectangle((pre.float() - threshold) / eps)
        grad_threshold = (-(threshold / eps) * kernel * grad.float()).sum(0)
        return grad_pre, grad_threshold, None


class StepFunction(torch.autograd.Function):
    """1[pre > θ] (for the L0 penalty); d/dθ by the STE −(1/ε)·K((pre−θ)/ε), no gradient to pre."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = rectangle((pre.float() - threshold) / eps)
        return None, (-(1.0 / eps) * kernel * grad.float()).sum(0), None


def preact_loss(
    weights: torch.Tensor,
    centred_sum: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    threshold: torch.Tensor,
    active_latents: torch.Tensor,
    active_values: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """(1/N) Σ_n Σ_i w_i relu(θ_i − pre_n,i) from the sparse code: Σ_n (θ_i − pre_n,i) over every
    row (pre is linear in x, so that is θ_i N − Σ_n x̄_n·W_enc[:, i] − N b_enc_i), plus
    pre − θ_i on the active entries (pre > θ_i), where the ReLU is 0."""
    every_row = n * threshold - centred_sum @ W_enc.detach() - n * b_enc.detach()  # [d_sae]
    over = torch.zeros_like(threshold).index_add_(
        0, active_latents, active_values - threshold[active_latents]
    )
    return (weights * (every_row + over)).sum() / n


# The sparse path runs while fewer than this fraction of the pre-activations are above θ − ε/2
# (early in a run, if at all, the autograd reference takes the rest).
SPARSE_BELOW = 0.1


class JumpReLULossFunction(torch.autograd.Function):
    """JumpReLU's loss ‖x − x̂‖² + λ‖f‖₀ (batch means) over the entries of the batch whose
    pre-activation is above θ − ε/2 (or a little below: the rest have no gradient), with a
    hand-written backward: the active entries (pre > θ) give the decoder and the gradients of
    W_enc, W_dec, b_enc, b_dec; the entries within ε/2 of θ give the straight-through gradients of
    JumpReLUFunction and StepFunction to θ, through dL/df there, ⟨2(x̂ − x)/N, W_dec[latent]⟩.

    Entry e is latent latents[e] of row rows[e] (grouped by row), its pre-activation values[e].
    preact_weights [d_sae] (or None) weighs the pre-activation loss (`preact_loss`), whose
    gradient is a rank-one term over every row plus a correction on the active entries.
    Returns (loss, mse, l0, active [E] bool)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        W_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor,
        log_threshold: torch.Tensor,
        rows: torch.Tensor,
        latents: torch.Tensor,
        values: torch.Tensor,
        l0_coefficient: float,
        bandwidth: float,
        preact_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        threshold = log_threshold.detach().exp()
        entry_threshold = threshold[latents]
        active = values > entry_threshold
        near = rectangle((values - entry_threshold) / bandwidth).bool()
        active_rows, active_latents, active_values = rows[active], latents[active], values[active]
        x_hat = F.embedding_bag(
            active_latents, W_dec, row_offsets(active_rows, n), mode="sum", per_sample_weights=active_values
        )
        residual = x_hat.add_(b_dec).sub_(x)  # x̂ − x, [N, d_in]
        mse = residual.pow(2).sum() / n
        l0 = active.sum().float() / n
        loss = mse + l0_coefficient * l0
        centred_sum = x.sum(0) - n * b_dec  # Σ_n (x_n − b_dec), [d_in]
        if preact_weights is None:
            preact_weights = threshold.new_zeros(0)
        else:
            loss = loss + preact_loss(
                preact_weights, centred_sum, W_enc, b_enc, threshold, active_latents, active_values, n
            )
        ctx.save_for_backward(
            x,
            W_enc,
            W_dec,
            b_dec,
            threshold,
            rows,
            latents,
            values,
            active,
            near,
            residual,
            preact_weights,
            centred_sum,
        )
        ctx.l0_coefficient, ctx.bandwidth, ctx.n = l0_coefficient, bandwidth, n
        ctx.mark_non_differentiable(mse, l0, active)
        return loss, mse, l0, active

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        (
            x,
            W_enc,
            W_dec,
            b_dec,
            threshold,
            rows,
            latents,
            values,
            active,
            near,
            residual,
            preact_weights,
            centred_sum,
        ) = ctx.saved_tensors
        n, eps = ctx.n, ctx.bandwidth
        scale = float(grad_loss) / n
        grad_x_hat = residual.mul_(2 * scale)  # [N, d_in]; the residual is not needed again
        # dL/df at every entry: the active ones' pre-activation gradient, the near ones' for θ.
        grad_f = per_sample_weight_grads(grad_x_hat, W_dec, latents, row_offsets(rows, n), rows)
        # θ: JumpReLU's −(θ/ε)·K·dL/df and the L0 step's −(1/ε)·K·λ/N, K = 1 on the near entries;
        # then dθ/dlog θ = θ.
        near_latents = latents[near]
        grad_threshold = torch.zeros_like(threshold).index_add_(
            0,
            near_latents,
            grad_f[near].mul_(threshold[near_latents]).add_(ctx.l0_coefficient * scale).mul_(-1.0 / eps),
        )
        active_rows, active_latents = rows[active], latents[active]
        grad_pre = grad_f[active]
        if len(preact_weights):
            # The pre-activation loss's gradient in pre is −w_i/N below θ_i, 0 above: −w_i/N on
            # every entry (rank one, added below) plus w_i/N on the active ones.
            grad_pre = grad_pre + scale * preact_weights[active_latents]
        grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec = sparse_parameter_grads(
            x,
            W_enc,
            b_dec,
            grad_x_hat,
            active_latents,
            (grad_x_hat, active_rows, values[active]),
            active_rows,
            grad_pre,
        )
        if len(preact_weights):
            every = scale * preact_weights  # [d_sae]: −(this) per row on every entry
            grad_W_enc.addr_(centred_sum, every, alpha=-1.0)
            grad_b_enc.sub_(n * every)
            grad_b_dec.add_(W_enc @ (n * every))
            # d/dθ_i of Σ_n relu(θ_i − pre): the number of rows below θ_i.
            below = n - torch.bincount(active_latents, minlength=len(threshold)).float()
            grad_threshold.add_(every * below)
        return (
            None,
            grad_W_enc,
            grad_W_dec,
            grad_b_enc,
            grad_b_dec,
            grad_threshold.mul_(threshold),
            None,
            None,
            None,
            None,
            None,
            None,
        )


class JumpReLU(Variant):
    name = "jumprelu"
    saelens_architecture = "jumprelu"
    sparsity_loss_name = "l0"

    def add_parameters(self, sae: SparseAutoencoder) -> None:
        # θ > 0 is kept by learning log θ; `threshold` exposes θ itself.
        sae.log_threshold = nn.Parameter(
            torch.full((sae.cfg.d_sae,), math.log(sae.cfg.jumprelu_init_threshold))
        )

    def param_groups(self, sae: SparseAutoencoder) -> list[dict[str, Any]]:
        others = [p for name, p in sae.named_parameters() if name != "log_threshold"]
        return [
            {"params": others},
            {"params": [sae.log_threshold], "lr_scale": sae.cfg.jumprelu_threshold_lr_scale},
        ]

    def resample_extra(
        self, sae: SparseAutoencoder, dead_idx: torch.Tensor, dead: torch.Tensor
    ) -> list[tuple[torch.Tensor, tuple[Any, ...]]]:
        """A resampled latent starts at the median threshold of the alive ones."""
        alive = sae.log_threshold[~dead]
        if len(alive):
            sae.log_threshold[dead_idx] = alive.median()
        return [(sae.log_threshold, (dead_idx,))]

    def activate(self, sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
        return JumpReLUFunction.apply(pre, self.threshold(sae), sae.cfg.jumprelu_bandwidth)

    def threshold(self, sae: SparseAutoencoder) -> torch.Tensor:
        return sae.log_threshold.exp()

    def load_threshold(self, sae: SparseAutoencoder, threshold: torch.Tensor) -> None:
        sae.log_threshold.copy_(threshold.clamp_min(1e-30).log())

    def auxiliary_loss(self, state: TrainState, pre: torch.Tensor) -> torch.Tensor | float:
        """The pre-activation loss on the dead latents (SAEConfig.jumprelu_preact_coefficient)."""
        weights = preact_weights(state)
        if weights is None:
            return 0.0
        below = (self.threshold(state.sae) - pre.float()).relu()  # [N, d_sae]
        return (below @ weights).sum() / pre.shape[0]

    def sparsity_loss(
        self, state: TrainState, pre: torch.Tensor, f: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """L0 through the step function's straight-through estimator."""
        l0 = StepFunction.apply(pre, self.threshold(state.sae), state.cfg.jumprelu_bandwidth)
        return l0.sum(dtype=torch.float32) / pre.shape[0]

    def loss_terms(self, state: TrainState, x: torch.Tensor, step: int, count_active: bool) -> LossTerms:
        """Through `JumpReLULossFunction` while the pre-activations above θ − ε/2 are sparse, else
        through autograd (`reference_loss`). The active latents are always counted (they are at hand)."""
        cfg, sae = state.cfg, state.sae
        # A margin below θ − ε/2, so that rounding never leaves out an entry the kernel passes.
        lower = (sae.log_threshold.detach().exp() - 0.6 * cfg.jumprelu_bandwidth).float()

        def select(pre: torch.Tensor) -> tuple[torch.Tensor, ...]:
            mask = pre > lower
            rows, latents = mask.nonzero(as_tuple=True)  # row-major, as masked_select reads
            return rows, latents, pre.masked_select(mask).float()

        blocks = encode_blocks(x, sae.W_enc, sae.b_enc, sae.b_dec, compute_dtype(cfg), select)
        if sum(len(b[0]) for b in blocks) >= SPARSE_BELOW * x.shape[0] * cfg.d_sae:
            return super().loss_terms(state, x, step, count_active)
        rows = torch.cat([b[0] + i * ENCODER_BLOCK_ROWS for i, b in enumerate(blocks)])
        latents, values = torch.cat([b[1] for b in blocks]), torch.cat([b[2] for b in blocks])
        loss, mse, l0, active = JumpReLULossFunction.apply(
            x,
            sae.W_enc,
            sae.W_dec,
            sae.b_enc,
            sae.b_dec,
            sae.log_threshold,
            rows,
            latents,
            values,
            self.sparsity_weight(state, step),
            cfg.jumprelu_bandwidth,
            preact_weights(state),
        )
        fired = torch.zeros(cfg.d_sae, device=x.device).index_fill_(0, latents[active], 1.0)
        return LossTerms(loss, mse, l0, fired, active.sum().float())


def preact_weights(state: TrainState) -> torch.Tensor | None:
    """The pre-activation loss's weight per latent, [d_sae]: its coefficient on the dead latents,
    0 on the others; None when it is off or nothing is dead."""
    coefficient, dead = state.cfg.jumprelu_preact_coefficient, state.dead_mask
    if coefficient <= 0 or not bool(dead.any()):
        return None
    return dead.float() * coefficient
