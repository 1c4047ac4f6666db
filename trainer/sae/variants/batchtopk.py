"""batchtopk: Bussmann et al. 2024, "BatchTopK Sparse Autoencoders".

    training:   f = pre · 1[pre ≥ τ_batch],  τ_batch the (k·N)-th largest pre-activation of the batch
    inference:  f = pre · 1[pre > θ],        θ one global threshold estimated during training
    L = (1/N) Σ_n ‖x_n − x̂_n‖² + aux_coefficient · AuxK

k latents per input on average, so no sparsity penalty; AuxK as for topk. θ is a buffer of the SAE
(`batchtopk_threshold`), and the saved SAE is a SAELens jumprelu one with θ for every latent.
Trained through autograd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainer.distributed import all_gather_rows
from trainer.sae.source import peek_rows
from trainer.sae.sparse_ops import auxk_loss
from trainer.sae.variants.base import Variant

if TYPE_CHECKING:
    from trainer.sae.autoencoder import SparseAutoencoder
    from trainer.sae.state import TrainState


def batch_topk_threshold(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The value of the (k·N)-th largest pre-activation of the batch (a 0-dim fp32 tensor); under
    data parallelism, of the global batch (every rank's rows).

    A full top-(k·N) over N·d_sae numbers is slow on a CPU, so take each row's top m = 4k first:
    the answer is exact unless some row put all m of its candidates above it, which we check.
    """
    n_rows, d_sae = pre.shape
    m = min(d_sae, 4 * k)
    row_top = all_gather_rows(torch.topk(pre, m, dim=-1, sorted=True).values.float())  # [N, m]
    n_keep = min(k * len(row_top), len(row_top) * d_sae)
    threshold = torch.topk(row_top.flatten(), n_keep, sorted=False).values.min()
    if m < d_sae and bool((row_top[:, -1] >= threshold).any()):  # the same on every rank
        threshold = torch.topk(all_gather_rows(pre.float()).flatten(), n_keep, sorted=False).values.min()
    return threshold


@torch.no_grad()
def track_threshold(sae: SparseAutoencoder, threshold: torch.Tensor, decay: float = 0.99) -> None:
    """Fold a batch's threshold into the inference threshold θ (`sae.batchtopk_threshold`)."""
    # Bussmann et al. 2024 estimate the inference threshold as the average over training batches
    # of the smallest activation kept; an exponential average follows the drifting weights.
    if float(sae.batchtopk_threshold) == 0.0:
        sae.batchtopk_threshold.copy_(threshold)
    else:
        sae.batchtopk_threshold.mul_(decay).add_((1 - decay) * threshold)


THRESHOLD_ROWS = 8192  # training rows on which the final θ is set


class BatchTopK(Variant):
    name = "batchtopk"
    saelens_architecture = "jumprelu"
    sparsity_loss_name = "auxk"
    uses_sparsity_coefficient = False
    # Gao et al. 2024's tied unit-norm init: with a small encoder, the latents that lose the first
    # top-k contests never win again (31% dead after 3M demo tokens at 0.1, 0.3% at 1.0).
    default_init_norm = 1.0
    # lr stays at 3e-3 (Variant's). At 1e-3, as TopK, no latent died in 1M demo tokens at k = 16
    # (26% at 3e-3), but planted directions were found far worse in 1,200 steps (mean max cosine
    # 0.72 at 1e-3, 0.89 at 2e-3; tests/trainer/sae/test_recovery.py needs 0.9).

    def activate(self, sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
        """The batch's top k·N at train time (`sae.training`), the tracked threshold at inference."""
        if sae.training:
            threshold = batch_topk_threshold(pre.detach(), sae.cfg.k).float().clamp_min(0)
            track_threshold(sae, threshold)
            return pre * (pre >= threshold)  # threshold >= 0, so this is ReLU'd too
        return pre * (pre > sae.batchtopk_threshold)

    def threshold(self, sae: SparseAutoencoder) -> torch.Tensor:
        return sae.batchtopk_threshold.expand(sae.cfg.d_sae)

    def load_threshold(self, sae: SparseAutoencoder, threshold: torch.Tensor) -> None:
        sae.batchtopk_threshold.copy_(threshold.max())

    def sparsity_loss(
        self, state: TrainState, pre: torch.Tensor, f: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        return auxk_loss(state.sae, pre, residual, state.dead_mask, state.cfg.aux_k)

    @torch.no_grad()
    def finish_training(self, state: TrainState) -> None:
        """θ from the final weights: the (k·N)-th largest pre-activation of N training rows, so that
        inference keeps k latents per row on average, as training did. The running average of
        `track_threshold` trails weights that are still moving: after 256 steps at k = 16 it let
        through 12.7 latents per training row."""
        sae = state.sae
        rows = peek_rows(state.source, THRESHOLD_ROWS).to(sae.W_dec.device)
        threshold = batch_topk_threshold(sae.pre_activations(rows).float(), sae.cfg.k).clamp_min(0)
        sae.batchtopk_threshold.copy_(threshold)
