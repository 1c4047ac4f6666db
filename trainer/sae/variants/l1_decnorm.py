"""l1_decnorm: Anthropic's April 2024 update of the recipe ("Circuits Updates — April 2024"): the
decoder norms move into the L1 term instead of a unit-norm constraint.

    f = ReLU((x − b_dec) W_enc + b_enc);   L = (1/N) Σ_n ‖x_n − x̂_n‖² + λ_t · (1/N) Σ_n Σ_i f_n,i ‖W_dec,i‖

No norm constraint and no resampling.

Speed: paper's hand-written backward (`PaperLossFunction`, dense at first, sparse once few latents
fire) with the L1 term weighted by the decoder norms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainer.sae.variants import paper
from trainer.sae.variants.base import LossTerms, Variant, compute_dtype

if TYPE_CHECKING:
    from trainer.sae.autoencoder import SparseAutoencoder
    from trainer.sae.state import TrainState


class L1DecNorm(Variant):
    name = "l1_decnorm"
    saelens_architecture = "standard"
    sparsity_loss_name = "l1_decnorm"
    unit_norm_decoder = False

    def activate(self, sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def sparsity_loss(
        self, state: TrainState, pre: torch.Tensor, f: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        decoder_norms = state.sae.W_dec.norm(dim=1).to(f.dtype)  # [d_sae]
        return (f @ decoder_norms).sum(dtype=torch.float32) / f.shape[0]

    def loss_terms(self, state: TrainState, x: torch.Tensor, step: int, count_active: bool) -> LossTerms:
        sae = state.sae
        loss, mse, l1, counts = paper.PaperLossFunction.apply(
            x,
            sae.W_enc,
            sae.W_dec,
            sae.b_enc,
            sae.b_dec,
            self.sparsity_weight(state, step),
            compute_dtype(state.cfg),
            paper.SPARSE_BELOW,
            True,  # weight_by_decoder_norm
        )
        return LossTerms.from_counts(loss, mse, l1, counts)
