"""Tensor helpers shared by the variants: the embedding-bag kernels of the sparse hand-written
backwards (paper once its codes are sparse, topk always), and AuxK (topk, batchtopk).

A sparse code is a list of (row, latent, value) entries. The decoder and every gradient then touch
only those entries: O(E·d_in) for E entries, not O(N·d_sae·d_in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
