"""Tensor helpers shared by the variants: the embedding-bag kernels of the sparse hand-written
backwards (paper and l1_decnorm once their codes are sparse, topk, batchtopk and jumprelu always),
the row-block encoder they start from, and AuxK (topk, batchtopk).

A sparse code is a list of (row, latent, value) entries. The decoder and every gradient then touch
only those entries: O(E·d_in) for E entries, not O(N·d_sae·d_in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from trainer.distributed import all_reduce_sum_, world_size

if TYPE_CHECKING:
    from trainer.sae.autoencoder import SparseAutoencoder


# ---------------------------------------------------------------------------- sparse backwards


def per_sample_weight_grads(
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


def fixed_width_grads(grad_out: torch.Tensor, W_dec: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`per_sample_weight_grads` for m latents in every row, indices [N, m]: an [N, m] result."""
    n, m = indices.shape
    rows = torch.arange(n, device=indices.device)
    offsets = rows * m
    return per_sample_weight_grads(
        grad_out, W_dec, indices.reshape(-1), offsets, rows.repeat_interleave(m)
    ).view(n, m)


def sum_rows_by_latent(
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


def sparse_parameter_grads(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_dec: torch.Tensor,
    grad_x_hat: torch.Tensor,
    latents: torch.Tensor,
    decoder: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    grad_pre: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad W_enc, grad W_dec, grad b_enc, grad b_dec) of a sparse code's entries: entry e is latent
    latents[e] of input row rows[e], its pre-activation's gradient grad_pre[e]. `decoder` is the
    (table, rows, weights) of `sum_rows_by_latent` that gives grad W_dec; grad_x_hat [N, d_in]."""
    d_in, d_sae = W_enc.shape
    # pre = (x − b_dec) W_enc + b_enc, so d/dW_enc = (x − b_dec)ᵀ grad_pre: a sum of centred rows.
    grad_W_dec, grad_W_enc_T = sum_rows_by_latent(latents, [decoder, (x - b_dec, rows, grad_pre)], d_sae)
    grad_b_enc = torch.zeros(d_sae, device=x.device).index_add_(0, latents, grad_pre)
    grad_W_enc = torch.empty(d_in, d_sae, device=x.device).copy_(grad_W_enc_T.t())
    grad_b_dec = grad_x_hat.sum(0) - W_enc @ grad_b_enc
    return grad_W_enc, grad_W_dec, grad_b_enc, grad_b_dec


def row_offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Where each row's entries start in a sparse code whose entries are grouped by row, [n_rows]."""
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


ENCODER_BLOCK_ROWS = 256  # rows per block of `encode_blocks`: a [256, d_sae] block stays in cache


@torch.no_grad()
def encode_blocks(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    dtype: torch.dtype,
    select: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
) -> list[tuple[torch.Tensor, ...]]:
    """`select(pre)` of each block of pre-activations pre = (x − b_dec) W_enc + b_enc [rows, d_sae],
    computed in `dtype` a block of rows at a time, so that the [N, d_sae] matrix never exists and
    each block is still in cache when `select` reads it. No autograd: the callers' backwards are
    hand-written."""
    bias = (b_enc - b_dec @ W_enc).to(dtype)  # (x − b_dec) W_enc + b_enc = x W_enc + bias
    W_enc_low = W_enc.to(dtype)
    return [select(torch.addmm(bias, block, W_enc_low)) for block in x.to(dtype).split(ENCODER_BLOCK_ROWS)]


class SparseCodeLossFunction(torch.autograd.Function):
    """‖x − x̂‖² + α·AuxK (batch means) of a sparse code given as entries, with TopKLossFunction's
    sparse backward (trainer.sae.variants.topk), for codes whose number of active latents varies
    by row (batchtopk).

    Entry e is latent latents[e] of row rows[e] (entries grouped by row) with value values[e], the
    pre-activation there: the activation passes it unchanged to active entries, so d/d(pre) =
    d/d(value). AuxK's entries are aux_indices / aux_values [N, aux_k] (width 0: no AuxK), as in
    `auxk_loss`. Returns (loss, mse, auxk); gradients flow to W_enc, W_dec, b_enc, b_dec."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        W_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor,
        rows: torch.Tensor,
        latents: torch.Tensor,
        values: torch.Tensor,
        aux_indices: torch.Tensor,
        aux_values: torch.Tensor,
        aux_coefficient: float,
    ) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        offsets = row_offsets(rows, n)
        x_hat = F.embedding_bag(latents, W_dec, offsets, mode="sum", per_sample_weights=values)
        residual = x_hat.add_(b_dec).sub_(x)  # x̂ − x, [N, d_in]
        mse = residual.pow(2).sum() / n
        aux_error, variance, auxk = residual.new_zeros((n, 0)), 1.0, residual.new_zeros(())
        if aux_indices.shape[1] > 0:
            variance_t = batch_variance(residual)
            aux_error = F.embedding_bag(aux_indices, W_dec, per_sample_weights=aux_values, mode="sum")
            aux_error.add_(residual)  # r̂ − (x − x̂)
            auxk, variance = aux_error.pow(2).sum() / n / variance_t, float(variance_t)
        ctx.save_for_backward(
            x,
            W_enc,
            W_dec,
            b_dec,
            rows,
            latents,
            values,
            offsets,
            residual,
            aux_indices,
            aux_values,
            aux_error,
        )
        ctx.aux_scale, ctx.n = aux_coefficient / variance, n
        ctx.mark_non_differentiable(mse, auxk)
        return mse + aux_coefficient * auxk, mse, auxk

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        (
            x,
            W_enc,
            W_dec,
            b_dec,
            rows,
            latents,
            values,
            offsets,
            residual,
            aux_indices,
            aux_values,
            aux_error,
        ) = ctx.saved_tensors
        n = ctx.n
        scale = 2 * float(grad_loss) / n
        grad_x_hat = residual.mul_(scale)  # [N, d_in]; the residual is not needed again
        grad_values = per_sample_weight_grads(grad_x_hat, W_dec, latents, offsets, rows)
        all_latents, all_rows, dec_rows, weights_dec, grad_pre = latents, rows, rows, values, grad_values
        table = grad_x_hat
        if aux_indices.shape[1] > 0:
            n_aux = aux_indices.shape[1]
            grad_aux = aux_error.mul_(scale * ctx.aux_scale)
            aux_rows = torch.arange(n, device=x.device).repeat_interleave(n_aux)
            all_latents = torch.cat([latents, aux_indices.reshape(-1)])
            all_rows = torch.cat([rows, aux_rows])
            dec_rows = torch.cat([rows, aux_rows + n])  # aux entries read the second half of `table`
            weights_dec = torch.cat([values, aux_values.reshape(-1)])
            grad_pre = torch.cat([grad_values, fixed_width_grads(grad_aux, W_dec, aux_indices).reshape(-1)])
            table = torch.cat([grad_x_hat, grad_aux])
        grads = sparse_parameter_grads(
            x, W_enc, b_dec, grad_x_hat, all_latents, (table, dec_rows, weights_dec), all_rows, grad_pre
        )
        return None, *grads, None, None, None, None, None, None


# ---------------------------------------------------------------------------- AuxK


def batch_variance(residual: torch.Tensor) -> torch.Tensor:
    """Σ‖r − mean r‖² / N over the global batch (all data-parallel ranks' rows), AuxK's normaliser."""
    n_total = residual.shape[0] * world_size()
    mean = all_reduce_sum_(residual.sum(0)) / n_total
    return (all_reduce_sum_((residual - mean).pow(2).sum()) / n_total).clamp_min(1e-12)


def auxk_loss(
    sae: SparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, aux_k: int
) -> torch.Tensor:
    """Gao et al. 2024's AuxK: the top-aux_k dead latents reconstruct the main reconstruction's error;
    the squared error is normalised by the error's variance. Zero when no latent is dead.

    The dead latents' pre-activations are used as they are, without the ReLU (as SAELens does): a
    latent dies with its pre-activation below zero on every input, where a ReLU would pass no
    gradient and AuxK could never bring it back (dead latents then grew to 10% of the demo SAE)."""
    dead_idx = dead.nonzero().squeeze(1)
    if len(dead_idx) == 0:
        return pre.new_zeros((), dtype=torch.float32)
    pre_dead = pre[:, dead_idx]  # [N, n_dead]
    values, indices = torch.topk(pre_dead, min(aux_k, len(dead_idx)), dim=-1, sorted=False)
    f_dead = torch.zeros_like(pre_dead).scatter_(-1, indices, values)
    residual_hat = (f_dead @ sae.W_dec[dead_idx].to(f_dead.dtype)).float()
    residual = residual.detach()
    return (residual_hat - residual).pow(2).sum(-1).mean() / batch_variance(residual)
