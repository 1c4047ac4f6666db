"""jumprelu: Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders".

    f = pre · 1[pre > θ],  θ > 0 a learned threshold per latent (kept as log θ)
    L = (1/N) Σ_n ‖x_n − x̂_n‖² + λ_t · (1/N) Σ_n ‖f_n‖₀

The step function has no gradient in θ, so both JumpReLU and the L0 term pass straight-through
estimates to θ through a rectangle kernel of width ε = `jumprelu_bandwidth` (their eq. 11).
Trained through autograd.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from trainer.sae.variants.base import Variant

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

    def activate(self, sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
        return JumpReLUFunction.apply(pre, self.threshold(sae), sae.cfg.jumprelu_bandwidth)

    def threshold(self, sae: SparseAutoencoder) -> torch.Tensor:
        return sae.log_threshold.exp()

    def load_threshold(self, sae: SparseAutoencoder, threshold: torch.Tensor) -> None:
        sae.log_threshold.copy_(threshold.clamp_min(1e-30).log())

    def sparsity_loss(
        self, state: TrainState, pre: torch.Tensor, f: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """L0 through the step function's straight-through estimator."""
        l0 = StepFunction.apply(pre, self.threshold(state.sae), state.cfg.jumprelu_bandwidth)
        return l0.sum(dtype=torch.float32) / pre.shape[0]
