"""topk: Gao et al. 2024, "Scaling and evaluating sparse autoencoders".

    f = ReLU(TopK_k((x − b_dec) W_enc + b_enc))   (the k largest pre-activations of each row)
    L = (1/N) Σ_n ‖x_n − x̂_n‖² + aux_coefficient · AuxK

The L0 is fixed at k, so there is no sparsity penalty; AuxK (trainer.sae.sparse_ops.auxk_loss) has
the top aux_k dead latents reconstruct the error, so that they come back to life.

Speed: a hand-written backward (`TopKLossFunction`): only the encoder matmul is dense (bf16).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from trainer.sae.revive import batch_shortfall, block_margins
from trainer.sae.sparse_ops import auxk_loss, batch_variance, fixed_width_grads, sparse_parameter_grads
from trainer.sae.variants.base import LossTerms, Variant, compute_dtype

if TYPE_CHECKING:
    from trainer.config import SAEConfig
    from trainer.sae.autoencoder import SparseAutoencoder
    from trainer.sae.state import TrainState

ENCODER_BLOCK_ROWS = 256  # TopK's encoder runs in row blocks of this size (see TopKLossFunction)


def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations of each row, ReLU'd; zeros elsewhere."""
    values, indices = torch.topk(pre, k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


class TopKLossFunction(torch.autograd.Function):
    """TopK's loss ‖x − x̂‖² + α·AuxK (batch means; Gao et al. 2024) with a sparse-aware backward.

    Only the encoder matmul is dense. After it, everything touches just the k active latents of
    each row (and the aux_k dead ones of AuxK): the decoder is an embedding_bag over W_dec rows, the
    gradients of the k values come from per-row dot products, and both weight gradients are
    embedding_bags over the (row, latent) pairs sorted by latent: O(N·k·d_in), not O(N·d_sae·d_in).
    Inputs are the fp32 master weights; the encoder matmul runs in `dtype`.
    With `revive_rows`, also how far each dead latent fell short of winning on that many rows
    (trainer.sae.revive). Returns (loss, mse, auxk, indices [N, k], values [N, k], shortfall
    [n_dead] or [0])."""

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
        revive_rows: int = 0,
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
                pre_dead = pre.index_select(1, dead_idx)  # [rows, n_dead]
                block += tuple(torch.topk(pre_dead, n_aux, dim=-1, sorted=False))
                if revive_rows > 0:  # trainer.sae.revive: how far each is from its rows' k-th
                    block += (block_margins(pre_dead, block[0].amin(1, keepdim=True), revive_rows),)
            blocks.append(block)
        values = torch.cat([b[0] for b in blocks]).float().relu_()
        indices = torch.cat([b[1] for b in blocks])
        x_hat = F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")
        residual = x_hat.add_(b_dec).sub_(x)  # x̂ − x, [N, d_in]
        mse = residual.pow(2).sum() / n
        aux_indices = indices.new_zeros((n, 0))
        aux_values = values.new_zeros((n, 0))
        aux_error, variance, auxk = residual.new_zeros((n, 0)), 1.0, residual.new_zeros(())
        shortfall = residual.new_zeros((0,))
        if n_aux > 0 and revive_rows > 0:
            shortfall = batch_shortfall([b[4] for b in blocks], revive_rows)
        if n_aux > 0:
            # The dead latents reconstruct the main error x − x̂ (a constant here).
            aux_values = torch.cat([b[2] for b in blocks]).float()  # no ReLU: see auxk_loss
            aux_indices = dead_idx[torch.cat([b[3] for b in blocks])]
            variance_t = batch_variance(residual)
            aux_error = F.embedding_bag(aux_indices, W_dec, per_sample_weights=aux_values, mode="sum")
            aux_error.add_(residual)  # r̂ − (x − x̂)
            auxk, variance = aux_error.pow(2).sum() / n / variance_t, float(variance_t)
        ctx.save_for_backward(
            x, W_enc, W_dec, b_dec, indices, values, residual, aux_indices, aux_values, aux_error
        )
        ctx.aux_scale, ctx.n = aux_coefficient / variance, n
        ctx.mark_non_differentiable(mse, auxk, indices, values, shortfall)
        return mse + aux_coefficient * auxk, mse, auxk, indices, values, shortfall

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        x, W_enc, W_dec, b_dec, indices, values, residual, aux_indices, aux_values, aux_error = (
            ctx.saved_tensors
        )
        n, k = indices.shape
        scale = 2 * float(grad_loss) / ctx.n
        grad_x_hat = residual.mul_(scale)  # [N, d_in]; the residual is not needed again
        grad_aux = aux_error.mul_(scale * ctx.aux_scale)  # [N, d_in] or [N, 0]
        # d/d(value) of Σ_j value_j W_dec[idx_j]; ReLU's derivative masks the zeros.
        grad_values = fixed_width_grads(grad_x_hat, W_dec, indices).mul_(values > 0)
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
            grad_aux_values = fixed_width_grads(grad_aux, W_dec, aux_indices)
            latents.append(aux_indices.reshape(-1))
            row_of.append(rows.repeat_interleave(n_aux))
            weights_dec.append(aux_values.reshape(-1))
            grad_pre.append(grad_aux_values.reshape(-1))
            table = torch.cat([grad_x_hat, grad_aux])
        n_main = n * k
        all_latents, all_rows = torch.cat(latents), torch.cat(row_of)
        dec_rows = all_rows.clone()
        dec_rows[n_main:] += n  # aux entries read the second half of `table`
        grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec = sparse_parameter_grads(
            x,
            W_enc,
            b_dec,
            grad_x_hat,
            all_latents,
            (table, dec_rows, torch.cat(weights_dec)),
            all_rows,
            torch.cat(grad_pre),
        )
        return None, grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec, None, None, None, None, None, None


class TopK(Variant):
    name = "topk"
    saelens_architecture = "topk"
    saelens_activation_fn = "topk"
    sparsity_loss_name = "auxk"
    uses_sparsity_coefficient = False
    # Gao et al. 2024's tied unit-norm init: with a small encoder, the latents that lose the first
    # top-k contests never win again (31% dead after 3M demo tokens at 0.1, 0.3% at 1.0).
    default_init_norm = 1.0
    # BatchTopK's 3e-3: on the demo's 1M rows FVU 0.156 at k=8 and 0.117 at k=16 against 0.201
    # and 0.160 at 1e-3. The latents it kills (21% at k=8) revive.py brings back (4.6%).
    default_lr = 3e-3
    # AuxK alone let latents die all through a 256-step run at k = 8 (32% dead on held-out text);
    # resampling them toward badly reconstructed inputs at 10-55% of the run: 11%, with a lower FVU
    # (README, "SAE quality"). Later resamples would leave the new latents too little training.
    default_resample_fractions = (0.1, 0.25, 0.4, 0.55)

    def activate(self, sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
        return topk_activation(pre, sae.cfg.k)

    def saelens_fields(self, cfg: SAEConfig) -> dict[str, Any]:
        return {"k": cfg.k, "activation_fn_kwargs": {"k": cfg.k}}

    def sparsity_loss(
        self, state: TrainState, pre: torch.Tensor, f: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        return auxk_loss(state.sae, pre, residual, state.dead_mask, state.cfg.aux_k)

    def loss_terms(self, state: TrainState, x: torch.Tensor, step: int, count_active: bool) -> LossTerms:
        """Through `TopKLossFunction`; the active latents are always counted (they are at hand)."""
        cfg, sae = state.cfg, state.sae
        dead_idx = state.dead_mask.nonzero().squeeze(1)
        loss, mse, sparsity, indices, values, shortfall = TopKLossFunction.apply(
            x,
            sae.W_enc,
            sae.W_dec,
            sae.b_enc,
            sae.b_dec,
            cfg.k,
            dead_idx,
            cfg.aux_k,
            cfg.aux_coefficient,
            compute_dtype(cfg),
            cfg.revive_rows,
        )
        active = values > 0
        fired = torch.zeros(cfg.d_sae, device=x.device).index_fill_(0, indices[active], 1.0)
        revive = (dead_idx, shortfall) if len(shortfall) else None
        return LossTerms(loss, mse, sparsity, fired, active.sum().float(), revive)
