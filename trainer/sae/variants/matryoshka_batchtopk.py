"""matryoshka_batchtopk: Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka
Sparse Autoencoders" (arXiv 2503.17547), over BatchTopK (trainer.sae.variants.batchtopk).

The latents are ordered, and the prefixes of widths m_1 < m_2 < ... < m_L = d_sae
(`SAEConfig.matryoshka_widths`; default d_sae/8, d_sae/4, d_sae/2, d_sae) each reconstruct x alone:

    f = BatchTopK(pre)   (the batch's top k·N, as batchtopk; a global threshold θ at inference)
    x̂_m = f[:, :m] W_dec[:m] + b_dec
    L = (1/L) Σ_m (1/N) Σ_n ‖x_n − x̂_m,n‖² + aux_coefficient · AuxK

The first m_1 latents must explain as much as they can on their own, so a frequent parent feature
keeps a latent of its own there instead of being split into "parent and not child" and "child
with the parent folded in" (feature absorption; trainer.sae.planted measures it). The mean over
the prefixes, with equal weights as dictionary_learning's `MatryoshkaBatchTopKTrainer`, keeps AuxK's
weight what it is for batchtopk (SAELens sums them instead: the same up to Adam's scale-invariance
and AuxK's relative weight). AuxK reconstructs the full SAE's error, as SAELens does by default.
"StepStats.mse" is the full dictionary's error, comparable with every other variant's.

Inference is BatchTopK's: one threshold θ, so the saved SAE is a SAELens jumprelu one, as SAELens
itself saves its Matryoshka BatchTopK SAEs; it loads back as matryoshka_batchtopk from our cfg.json.

On the planted parent/child set (bench/bench_absorption.py, 3 seeds) its absorption is 0.11 against
BatchTopK's 0.61, for an FVU of 0.087 against 0.034: the first eighth of the dictionary alone
explains half the variance (FVU 0.54; BatchTopK's 0.94). Its parent latents lean toward their
children (decoder cosine 0.20 against 0.05): the first prefix has no child latents to share with.

What it costs: on tests/trainer/sae/test_recovery.py's planted superposition (256 power-law
features, d_sae 512, k 3, 1,200 steps) it finds them at 0.86 mean max cosine against BatchTopK's
0.93 (the most frequent quarter 0.99 either way, the rarest 0.72 against 0.84), FVU 0.184 against
0.166, so it is not among that test's variants (its bar is 0.9). Summing the prefix losses as
SAELens does (0.85) or widths 128/256/512 (0.87) did not change that.

Speed: training runs through autograd (no sparse path yet): 0.63 CPU s per step against BatchTopK's
0.21 at d_in 512, d_sae 4096, 4,096 rows, k 16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainer.sae.revive import batch_shortfall, block_margins
from trainer.sae.sparse_ops import auxk_loss
from trainer.sae.variants.base import LossTerms
from trainer.sae.variants.batchtopk import BatchTopK, batch_topk_threshold, track_threshold

if TYPE_CHECKING:
    from trainer.config import SAEConfig
    from trainer.sae.autoencoder import SparseAutoencoder
    from trainer.sae.state import TrainState

DEFAULT_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)  # of d_sae, when matryoshka_widths is not set


def prefix_widths(cfg: SAEConfig) -> tuple[int, ...]:
    """The nested prefixes' widths, increasing, the last d_sae."""
    if cfg.matryoshka_widths:
        return tuple(cfg.matryoshka_widths)
    widths = sorted({max(1, round(fraction * cfg.d_sae)) for fraction in DEFAULT_FRACTIONS})
    return tuple(widths)


def prefix_reconstructions(
    sae: SparseAutoencoder, f: torch.Tensor, widths: tuple[int, ...]
) -> list[torch.Tensor]:
    """x̂_m [N, d_in] for each prefix width m from the codes f [N, d_sae]: one pass over W_dec, each
    prefix adding its new latents' part to the last one's."""
    x_hat = sae.b_dec.to(f.dtype).expand(len(f), -1)
    reconstructions, start = [], 0
    for width in widths:
        x_hat = torch.addmm(x_hat, f[:, start:width], sae.W_dec[start:width].to(f.dtype))
        reconstructions.append(x_hat)
        start = width
    return reconstructions


class MatryoshkaBatchTopK(BatchTopK):
    name = "matryoshka_batchtopk"
    sparsity_loss_name = "auxk"
    # The rest is BatchTopK's: the tied unit init, lr 3e-3, no resampling, revive, θ and its saving.

    def matryoshka_loss(
        self, state: TrainState, x: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, full mse, AuxK, f, pre, the batch threshold) on x [N, d_in], through autograd."""
        cfg, sae = state.cfg, state.sae
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16"):
            pre = sae.pre_activations(x)  # [N, d_sae]
            threshold = batch_topk_threshold(pre.detach(), cfg.k).float().clamp_min(0)
            track_threshold(sae, threshold)
            f = pre * (pre >= threshold)  # threshold >= 0, so this is ReLU'd too
            residuals = [x - x_hat.float() for x_hat in prefix_reconstructions(sae, f, prefix_widths(cfg))]
            errors = [residual.pow(2).sum(-1).mean() for residual in residuals]
            residual = residuals[-1]  # the full dictionary's
            auxk = auxk_loss(sae, pre, residual, state.dead_mask, cfg.aux_k)
            loss = torch.stack(errors).mean() + self.sparsity_weight(state, step) * auxk
        return loss, errors[-1], auxk, f, pre, threshold

    def reference_loss(
        self, state: TrainState, x: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, mse, auxk, f, _, _ = self.matryoshka_loss(state, x, step)
        return loss, mse, auxk, f

    def loss_terms(self, state: TrainState, x: torch.Tensor, step: int, count_active: bool) -> LossTerms:
        """Through autograd, with BatchTopK's revive of the dead latents' encoder biases."""
        loss, mse, auxk, f, pre, threshold = self.matryoshka_loss(state, x, step)
        terms = LossTerms.from_codes(loss, mse, auxk, f, count_active)
        dead_idx = state.dead_mask.nonzero().squeeze(1)
        if state.cfg.revive_rows > 0 and len(dead_idx) > 0:
            margins = block_margins(pre.detach().index_select(1, dead_idx), 0.0, state.cfg.revive_rows)
            terms.revive = (dead_idx, batch_shortfall([margins], state.cfg.revive_rows, threshold))
        return terms
