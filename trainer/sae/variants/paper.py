"""paper: the recipe of Bricken et al. 2023 ("Towards Monosemanticity", appendix "Autoencoder
Training"), the one we reproduce.

    f = ReLU((x − b_dec) W_enc + b_enc);   L = (1/N) Σ_n ‖x_n − x̂_n‖² + λ_t · (1/N) Σ_n ‖f_n‖₁

Decoder rows are kept at unit norm (the gradient's parallel part removed before Adam, rows
renormalised after), and dead latents are resampled at `resample_fractions` of the run (appendix
"Neuron Resampling", trainer.sae.resample).

Speed: a hand-written backward (`PaperLossFunction`) with a bf16 encoder matmul, which touches only
the active latents once activations are sparse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from trainer.sae.sparse_ops import per_sample_weight_grads, row_offsets, sparse_parameter_grads
from trainer.sae.variants.base import LossTerms, Variant, compute_dtype

if TYPE_CHECKING:
    from trainer.sae.autoencoder import SparseAutoencoder
    from trainer.sae.state import TrainState

# The step goes sparse below this fraction of non-zero activations: at 512 -> 4096, batch 4096,
# bf16, a step costs the same both ways at ~8% (0.68 s of CPU), the sparse one 0.42 s at 4%, 0.22 s
# at 0.5% (AMD EPYC with AVX512-BF16, one thread).
SPARSE_BELOW = 0.06


class PaperLossFunction(torch.autograd.Function):
    """The paper's loss ‖x − x̂‖² + λ‖f‖₁ (batch means) with a hand-written backward. Inputs are the
    fp32 master weights; matmuls run in `dtype`. Returns (loss, mse, l1, counts), counts [d_sae]
    the number of rows each latent is active on (fp32).

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
        weight_by_decoder_norm: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        # l1_decnorm: the L1 term is Σ_i f_i ‖W_dec,i‖; the paper's unit-norm rows make it ‖f‖₁.
        norms = W_dec.norm(dim=1) if weight_by_decoder_norm else None  # [d_sae]
        x_low, W_enc_low = x.to(dtype), W_enc.to(dtype)
        bias = b_enc - b_dec @ W_enc  # (x − b_dec) W_enc + b_enc = x W_enc + bias
        f = torch.addmm(bias.to(dtype), x_low, W_enc_low).relu_()  # [N, d_sae]
        ctx.sparse = int(torch.count_nonzero(f)) < sparse_below * f.numel()
        if ctx.sparse:
            nonzero = f.nonzero()  # [E, 2] (row, latent), grouped by row
            rows, latents = nonzero[:, 0], nonzero[:, 1]
            values = f[rows, latents].float()
            offsets = row_offsets(rows, n)
            counts = torch.bincount(latents, minlength=f.shape[1]).float()
            x_hat = F.embedding_bag(latents, W_dec, offsets, mode="sum", per_sample_weights=values)
            residual = x_hat.add_(b_dec).sub_(x)  # x̂ − x, [N, d_in]
            totals = torch.zeros(W_dec.shape[0], device=x.device).index_add_(0, latents, values)
            ctx.save_for_backward(x, W_enc, W_dec, b_dec, rows, latents, values, offsets, residual)
        else:
            W_dec_low = W_dec.to(dtype)
            residual = torch.addmm(b_dec.to(dtype), f, W_dec_low).float().sub_(x)  # x̂ − x, [N, d_in]
            totals = f.sum(0, dtype=torch.float32)
            counts = (f > 0).sum(0, dtype=torch.float32)
            ctx.save_for_backward(x_low, W_enc, W_enc_low, W_dec_low, b_dec, f, residual)
        # totals [d_sae]: each latent's activations summed over the batch.
        l1 = (totals.sum() if norms is None else totals @ norms) / n
        ctx.norms, ctx.totals, ctx.W_dec = norms, totals, W_dec if weight_by_decoder_norm else None
        mse = residual.pow(2).sum() / n
        ctx.l1_coefficient, ctx.n = l1_coefficient, n
        ctx.mark_non_differentiable(mse, l1, counts)
        return mse + l1_coefficient * l1, mse, l1, counts

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        scale = float(grad_loss) / ctx.n
        if ctx.sparse:
            grads = PaperLossFunction._sparse_backward(ctx, scale)
        else:
            grads = PaperLossFunction._dense_backward(ctx, scale)
        grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec = grads
        if ctx.norms is not None:
            # d/dW_dec,i of λ·totals_i·‖W_dec,i‖ / N: along the row.
            row_scale = (ctx.l1_coefficient * scale) * ctx.totals / ctx.norms.clamp_min(1e-12)
            grad_W_dec.addcmul_(row_scale[:, None], ctx.W_dec)
        return None, grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec, None, None, None, None

    @staticmethod
    def _l1_grad(ctx: Any, scale: float) -> float | torch.Tensor:
        """d(λ·L1/N)/df on an active entry: λ/N, times the latent's decoder norm for l1_decnorm."""
        coefficient = ctx.l1_coefficient * scale
        return coefficient if ctx.norms is None else coefficient * ctx.norms

    @staticmethod
    def _dense_backward(ctx: Any, scale: float) -> tuple[torch.Tensor, ...]:
        x_low, W_enc, W_enc_low, W_dec_low, b_dec, f, residual = ctx.saved_tensors
        grad_x_hat = residual.mul_(2 * scale)  # [N, d_in] fp32; the residual is not needed again
        grad_x_hat_low = grad_x_hat.to(f.dtype)
        grad_W_dec = (f.T @ grad_x_hat_low).float()
        grad_f = grad_x_hat_low @ W_dec_low.T  # [N, d_sae]
        # d‖f‖₁/df = 1 where f > 0; ReLU's derivative masks the rest.
        l1_grad = PaperLossFunction._l1_grad(ctx, scale)
        if isinstance(l1_grad, torch.Tensor):
            l1_grad = l1_grad.to(grad_f.dtype)
        grad_pre = grad_f.add_(l1_grad).mul_(f > 0)
        grad_W_enc = (x_low.T @ grad_pre).float()
        grad_b_enc = grad_pre.sum(0, dtype=torch.float32)
        # bias = b_enc − b_dec W_enc: its gradient flows to b_dec and W_enc as well.
        grad_W_enc.sub_(torch.outer(b_dec, grad_b_enc))
        grad_b_dec = grad_x_hat.sum(0) - W_enc @ grad_b_enc
        return grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec

    @staticmethod
    def _sparse_backward(ctx: Any, scale: float) -> tuple[torch.Tensor, ...]:
        x, W_enc, W_dec, b_dec, rows, latents, values, offsets, residual = ctx.saved_tensors
        grad_x_hat = residual.mul_(2 * scale)
        # Every stored entry is > 0, so ReLU passes its gradient and d‖f‖₁/df = 1.
        grad_values = per_sample_weight_grads(grad_x_hat, W_dec, latents, offsets, rows)
        l1_grad = PaperLossFunction._l1_grad(ctx, scale)
        grad_values.add_(l1_grad if isinstance(l1_grad, float) else l1_grad[latents])
        return sparse_parameter_grads(
            x, W_enc, b_dec, grad_x_hat, latents, (grad_x_hat, rows, values), rows, grad_values
        )


class Paper(Variant):
    name = "paper"
    saelens_architecture = "standard"
    sparsity_loss_name = "l1"
    default_resample_fractions = (0.25, 0.5, 0.75)
    resample_takes_rows = True
    # 1e-2, where Variant's 3e-3 left directions that co-occur merged in a short run: on 128
    # directions planted in 16 dimensions in groups of 4 (tests/trainer/sae/test_recovery.py), mean
    # max cosine 0.89 at 3e-3, 0.92-0.93 at 1e-2, with a lower FVU (0.55 against 0.72). A longer λ
    # warm-up (0.8) or earlier resampling did not help (0.88, 0.89).
    default_lr = 1e-2

    def activate(self, sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def sparsity_loss(
        self, state: TrainState, pre: torch.Tensor, f: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        return f.sum(dtype=torch.float32) / f.shape[0]  # f >= 0, so this is ‖f‖₁

    def loss_terms(self, state: TrainState, x: torch.Tensor, step: int, count_active: bool) -> LossTerms:
        sae, cfg = state.sae, state.cfg
        loss, mse, l1, counts = PaperLossFunction.apply(
            x,
            sae.W_enc,
            sae.W_dec,
            sae.b_enc,
            sae.b_dec,
            self.sparsity_weight(state, step),
            compute_dtype(cfg),
            SPARSE_BELOW,
        )
        return LossTerms.from_counts(loss, mse, l1, counts)
