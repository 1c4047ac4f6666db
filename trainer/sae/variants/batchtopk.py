"""batchtopk: Bussmann et al. 2024, "BatchTopK Sparse Autoencoders".

    training:   f = pre · 1[pre ≥ τ_batch],  τ_batch the (k·N)-th largest pre-activation of the batch
    inference:  f = pre · 1[pre > θ],        θ one global threshold estimated during training
    L = (1/N) Σ_n ‖x_n − x̂_n‖² + aux_coefficient · AuxK

k latents per input on average, so no sparsity penalty; AuxK as for topk. The first
`batchtopk_topk_fraction` of the run trains as topk (each row's k): with the batch's top k·N from
the start, a row of large norm lets through every latent its interference lifts over the batch
threshold, and those latents learn to patch its error instead of finding directions. On 128
directions planted in 16 dimensions (tests/trainer/sae/test_recovery.py), rows of norm > 5 took 10
latents, rows of one feature 0.3, and the dictionary found them at mean max cosine 0.67 (topk 0.95). θ is a buffer of the SAE
(`batchtopk_threshold`), and the saved SAE is a SAELens jumprelu one with θ for every latent.

Speed: TopK's sparse path (`loss_terms`). The batch threshold is found in a pool of entries that
must hold the batch's top k·N: those above 0.8 × the last batch's threshold (`pool_above`), else
each row's top 4k (`pool_of_candidates`); the kept entries (a varying number per row) go through
`SparseCodeLossFunction`. Only the encoder matmul is dense (bf16).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainer.distributed import all_gather_rows, world_size
from trainer.sae.revive import batch_shortfall, block_margins
from trainer.sae.source import peek_rows
from trainer.sae.sparse_ops import ENCODER_BLOCK_ROWS, SparseCodeLossFunction, auxk_loss, encode_blocks
from trainer.sae.variants.base import LossTerms, Variant, compute_dtype
from trainer.sae.variants.topk import TopK

if TYPE_CHECKING:
    from trainer.sae.autoencoder import SparseAutoencoder
    from trainer.sae.state import TrainState


def batch_topk_threshold(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The value of the (k·N)-th largest pre-activation of the batch (a 0-dim fp32 tensor); under
    data parallelism, of the global batch (every rank's rows).

    A full top-(k·N) over N·d_sae numbers is slow on a CPU, so take each row's top m = 4k first:
    the answer is exact unless some row put all m of its candidates above it, which we check.
    """
    d_sae = pre.shape[1]
    m = min(d_sae, candidates_per_row(k))
    threshold, exact = threshold_from_candidates(torch.topk(pre, m, dim=-1, sorted=False).values, d_sae, k)
    if not exact:
        n_keep = min(k * pre.shape[0] * world_size(), pre.shape[0] * world_size() * d_sae)
        threshold = torch.topk(all_gather_rows(pre.float()).flatten(), n_keep, sorted=False).values.min()
    return threshold


def candidates_per_row(k: int) -> int:
    return 4 * k


def threshold_from_candidates(row_top: torch.Tensor, d_sae: int, k: int) -> tuple[torch.Tensor, bool]:
    """(the (k·N)-th largest of the rows' candidates row_top [N, m] (each row's m largest
    pre-activations, any order) over the global batch, whether it is the batch's exact threshold):
    inexact when some row put all m of its candidates at or above it (the same verdict on every rank)."""
    row_top = all_gather_rows(row_top.float())
    n_keep = min(k * len(row_top), len(row_top) * d_sae)
    threshold = torch.topk(row_top.flatten(), n_keep, sorted=False).values.min()
    exact = row_top.shape[1] >= d_sae or not bool((row_top.amin(1) >= threshold).any())
    return threshold, exact


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
TOPK = TopK()  # the loss of the run's first batchtopk_topk_fraction


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
    # No resampling (TopK's schedule, SAEConfig.resample_fractions, is there to try): on the demo's
    # 1M rows it cut the dead at k = 8 from 31% to 19% but raised the FVU at k = 8 and 16 (0.120 ->
    # 0.126 at k = 16, with more dead: 2.3% against 0.9%). Raising the dead latents' b_enc instead
    # (trainer.sae.revive, SAEConfig.revive_rows): k = 8 31% -> 2.2% dead, FVU 0.170 -> 0.172, and
    # 605 -> 113 CPU s, AuxK having ~150 dead latents to score instead of ~1,500.

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

    def loss_terms(self, state: TrainState, x: torch.Tensor, step: int, count_active: bool) -> LossTerms:
        """Through `SparseCodeLossFunction` on the batch's top k·N entries; topk's loss during the
        first `batchtopk_topk_fraction` of the run."""
        cfg, sae = state.cfg, state.sae
        if step <= round(cfg.batchtopk_topk_fraction * cfg.n_steps):
            return TOPK.loss_terms(state, x, step, count_active)
        dead_idx = state.dead_mask.nonzero().squeeze(1)
        n_aux = min(cfg.aux_k, len(dead_idx))
        pooled = None
        # The batch threshold moves little between steps: the entries above a margin under the
        # last batch's are a pool that holds this batch's top k·N when it has that many (one
        # compare per pre-activation, where each row's top 4k costs a partial sort).
        lower = POOL_MARGIN * getattr(sae, LAST_THRESHOLD, 0.0)
        if lower > 0 and world_size() == 1:
            pooled = pool_above(state, x, lower, dead_idx, n_aux)
        if pooled is None:
            pooled = pool_of_candidates(state, x, dead_idx, n_aux)
            if pooled is None:  # a saturated row under data parallelism: rare
                return super().loss_terms(state, x, step, count_active)
        (rows, latents, values, threshold), (aux_indices, aux_values, best) = pooled
        threshold = threshold.clamp_min(0)
        revive = (dead_idx, batch_shortfall(best, cfg.revive_rows, threshold)) if best else None
        track_threshold(sae, threshold)
        setattr(sae, LAST_THRESHOLD, float(threshold))
        keep = values >= threshold
        rows, latents, values = rows[keep], latents[keep], values[keep]  # grouped by row
        loss, mse, auxk = SparseCodeLossFunction.apply(
            x,
            sae.W_enc,
            sae.W_dec,
            sae.b_enc,
            sae.b_dec,
            rows,
            latents,
            values,
            aux_indices,
            aux_values,
            self.sparsity_weight(state, step),
        )
        active = values > 0
        fired = torch.zeros(cfg.d_sae, device=x.device).index_fill_(0, latents[active], 1.0)
        return LossTerms(loss, mse, auxk, fired, active.sum().float(), revive)


POOL_MARGIN = 0.8  # the pool of `pool_above` starts at this fraction of the last batch's threshold
LAST_THRESHOLD = "last_batch_threshold"  # the SAE's attribute holding it (not saved: a hint only)

Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows, latents, values, grouped by row
Aux = tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]  # aux_indices, aux_values, revive's blocks
Pool = tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], Aux]


def aux_select(
    pre: torch.Tensor, dead_idx: torch.Tensor, n_aux: int, revive_rows: int
) -> tuple[torch.Tensor, ...]:
    """AuxK's top aux_k of the dead latents' pre-activations in a block (nothing if n_aux is 0),
    and with `revive_rows` their best pre-activations (trainer.sae.revive)."""
    if n_aux == 0:
        return ()
    pre_dead = pre.index_select(1, dead_idx)  # [rows, n_dead]
    selected = tuple(torch.topk(pre_dead, n_aux, dim=-1, sorted=False))
    return selected + ((block_margins(pre_dead, 0.0, revive_rows),) if revive_rows > 0 else ())


def aux_entries(
    blocks: list[tuple[torch.Tensor, ...]], n_rows: int, dead_idx: torch.Tensor, n_aux: int, start: int
) -> Aux:
    """(aux_indices, aux_values) [N, n_aux] from the blocks' `aux_select` at position `start`, and
    the blocks' best pre-activations of the dead latents (empty without revive)."""
    if n_aux == 0:
        return dead_idx.new_zeros((n_rows, 0)), torch.zeros((n_rows, 0)), []
    values = torch.cat([b[start] for b in blocks]).float()  # no ReLU: see auxk_loss
    best = [b[start + 2] for b in blocks if len(b) > start + 2]
    return dead_idx[torch.cat([b[start + 1] for b in blocks])], values, best


def pool_above(
    state: TrainState, x: torch.Tensor, lower: float, dead_idx: torch.Tensor, n_aux: int
) -> Pool | None:
    """Every entry ≥ `lower` and the batch threshold among them; None when fewer than k·N are."""
    sae, cfg = state.sae, state.cfg

    def select(pre: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mask = pre >= lower
        rows, latents = mask.nonzero(as_tuple=True)  # row-major, as masked_select reads
        return (
            rows,
            latents,
            pre.masked_select(mask).float(),
            *aux_select(pre, dead_idx, n_aux, cfg.revive_rows),
        )

    blocks = encode_blocks(x, sae.W_enc, sae.b_enc, sae.b_dec, compute_dtype(cfg), select)
    values = torch.cat([b[2] for b in blocks])
    n_keep = cfg.k * len(x)
    if len(values) < n_keep:
        return None
    rows = torch.cat([b[0] + i * ENCODER_BLOCK_ROWS for i, b in enumerate(blocks)])
    threshold = torch.topk(values, n_keep, sorted=False).values.min()
    return (rows, torch.cat([b[1] for b in blocks]), values, threshold), aux_entries(
        blocks, len(x), dead_idx, n_aux, 3
    )


def pool_of_candidates(state: TrainState, x: torch.Tensor, dead_idx: torch.Tensor, n_aux: int) -> Pool | None:
    """Each row's top 4k entries (and all of a row's entries above the threshold where its 4k are
    not enough) and the batch threshold among them; None when that would need ragged gathers."""
    sae, cfg = state.sae, state.cfg
    m, dtype = min(cfg.d_sae, candidates_per_row(cfg.k)), compute_dtype(cfg)

    def select(pre: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*torch.topk(pre, m, dim=-1, sorted=False), *aux_select(pre, dead_idx, n_aux, cfg.revive_rows))

    blocks = encode_blocks(x, sae.W_enc, sae.b_enc, sae.b_dec, dtype, select)
    candidates = torch.cat([b[0] for b in blocks]).float()  # [N, m]
    threshold, exact = threshold_from_candidates(candidates, cfg.d_sae, cfg.k)
    rows = torch.arange(len(x), device=x.device).repeat_interleave(m)
    entries = (rows, torch.cat([b[1] for b in blocks]).reshape(-1), candidates.reshape(-1))
    aux = aux_entries(blocks, len(x), dead_idx, n_aux, 2)
    if exact:
        return (*entries, threshold), aux
    if world_size() > 1:
        return None
    return widen_saturated_rows(state, x, candidates, entries, threshold, dtype), aux


def widen_saturated_rows(
    state: TrainState,
    x: torch.Tensor,
    candidates: torch.Tensor,
    entries: Entries,
    threshold: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidate entries (rows, latents, values) with every entry ≥ `threshold` of the rows
    whose m candidates all reached it, and the batch's exact threshold among them.

    The candidates' (k·N)-th largest is at most the batch's; a row whose m candidates are all at or
    above it may hold more. With all of such a row's entries above it in the pool, the pool holds
    every entry above the true threshold, so its (k·N)-th largest is the true threshold."""
    sae = state.sae
    saturated = (candidates.amin(1) >= threshold).nonzero().squeeze(1)  # [S]

    def select(pre: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mask = pre >= threshold
        rows, latents = mask.nonzero(as_tuple=True)  # row-major, as masked_select reads
        return rows, latents, pre.masked_select(mask).float()

    blocks = encode_blocks(x[saturated], sae.W_enc, sae.b_enc, sae.b_dec, dtype, select)
    extra_rows = saturated[torch.cat([b[0] + i * ENCODER_BLOCK_ROWS for i, b in enumerate(blocks)])]
    rows, latents, values = entries
    kept = ~torch.isin(rows, saturated)
    rows = torch.cat([rows[kept], extra_rows])
    latents = torch.cat([latents[kept], torch.cat([b[1] for b in blocks])])
    values = torch.cat([values[kept], torch.cat([b[2] for b in blocks])])
    order = torch.argsort(rows, stable=True)  # grouped by row again
    rows, latents, values = rows[order], latents[order], values[order]
    n_keep = min(state.cfg.k * len(x), len(values))
    return rows, latents, values, torch.topk(values, n_keep, sorted=False).values.min()
