"""Dead latents of the TopK family brought back by their encoder bias (topk, batchtopk).

AuxK (trainer.sae.sparse_ops) trains a dead latent's weights to explain the batch's error, but the
latent is only alive again once its pre-activation wins a contest: beats its row's k-th largest
(topk) or the batch's threshold (batchtopk). In a short run at k = 8 many never did, and a third of
the latents ended dead. So after each step every dead latent's b_enc is raised by how far its
`revive_rows`-th best pre-activation of the batch fell short of the value it had to beat: it then
just wins on that many rows, where AuxK has already pointed its decoder at their error, and from
there the main loss trains it. A latent that keeps losing is raised again; nothing else moves.
"""

from __future__ import annotations

import torch

from trainer.distributed import all_gather_rows


@torch.no_grad()
def block_margins(pre_dead: torch.Tensor, to_beat: torch.Tensor | float, revive_rows: int) -> torch.Tensor:
    """The `revive_rows` largest of pre_dead − to_beat over a block's rows for each dead latent:
    [min(revive_rows, rows), n_dead]; to_beat is a row's k-th largest [rows, 1] or a scalar."""
    margins = pre_dead.float() - to_beat
    return torch.topk(margins, min(revive_rows, len(margins)), dim=0, sorted=False).values


@torch.no_grad()
def batch_shortfall(
    blocks: list[torch.Tensor], revive_rows: int, offset: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """[n_dead] how far each dead latent's `revive_rows`-th best margin over the global batch (all
    data-parallel ranks') is below zero, from the blocks' `block_margins` minus `offset`; ≥ 0."""
    margins = all_gather_rows(torch.cat(blocks)) - offset
    best = torch.topk(margins, min(revive_rows, len(margins)), dim=0, sorted=False).values
    return best.amin(0).neg().clamp_min(0)


@torch.no_grad()
def raise_dead_biases(b_enc: torch.Tensor, dead_idx: torch.Tensor, shortfall: torch.Tensor) -> None:
    """b_enc[dead_idx] += shortfall: each dead latent then reaches the value it had to beat."""
    b_enc.index_add_(0, dead_idx, shortfall.to(b_enc.dtype))
