"""Neuron resampling (Towards Monosemanticity, appendix "Neuron Resampling"), for the variants
that resample (`Variant.default_resample_fractions`, or `SAEConfig.resample_fractions`)."""

from __future__ import annotations

import torch

from trainer.config import SAEConfig
from trainer.distributed import all_gather_rows, rank_rows, world_size
from trainer.sae.source import peek_rows
from trainer.sae.state import ResampleResult, TrainState
from trainer.sae.variants import get_variant

RESAMPLE_ROWS = 65_536  # inputs scored for resampling (the paper used 819,200 on a far longer run)


def resample_fractions(cfg: SAEConfig) -> tuple[float, ...]:
    """When dead latents are resampled, as fractions of the run: the config's, else the variant's."""
    if cfg.resample_fractions is not None:
        return tuple(cfg.resample_fractions)
    return get_variant(cfg.variant).default_resample_fractions


def resample_encoder_scale(cfg: SAEConfig) -> float:
    if cfg.resample_encoder_scale is not None:
        return cfg.resample_encoder_scale
    return get_variant(cfg.variant).default_resample_encoder_scale


def resample_steps(cfg: SAEConfig) -> set[int]:
    """The steps after which dead latents are resampled."""
    return {round(fraction * cfg.n_steps) for fraction in resample_fractions(cfg)}


@torch.no_grad()
def resample_dead_latents(state: TrainState, n_rows: int = RESAMPLE_ROWS) -> ResampleResult:
    """Towards Monosemanticity, appendix "Neuron Resampling": dead latents get the direction of an
    input the SAE reconstructs badly (drawn with probability ∝ loss²), their encoder vector that
    direction × 0.2 (the paper's; `resample_encoder_scale`) × the mean alive encoder norm, b_enc 0,
    the variant's own parameters reset (`Variant.resample_extra`), and fresh Adam moments.

    "Input" is taken as the SAE sees it, x − b_dec, so the new latent fires on the input it was
    drawn from (a raw MLP activation is all-positive and mostly its mean). Under data parallelism
    every rank reads the same rows, scores its share, and all draw from the gathered losses with
    the same generator, so all make the same choice."""
    sae, dead = state.sae, state.dead_mask
    dead_idx = dead.nonzero().squeeze(1)
    state.resamples.append({"step": state.step, "n_dead": len(dead_idx)})
    if len(dead_idx) == 0:
        return ResampleResult(step=state.step, n_dead=0)
    n_rows = min(n_rows, max(state.source.n_rows, state.cfg.batch_size))
    n_rows -= n_rows % world_size()
    # [n_rows, d_in], on the CPU. The paper's variant scores rows it then skips; the others score
    # the rows training reads next.
    x = state.source.take_rows(n_rows) if sae.variant.resample_takes_rows else peek_rows(state.source, n_rows)
    mine = x[rank_rows(len(x))].to(sae.W_dec.device)
    was_training = sae.training
    sae.eval()
    losses = torch.cat([(sae(chunk)[0] - chunk).pow(2).sum(-1) for chunk in mine.split(8192)])
    sae.train(was_training)
    weights = all_gather_rows(losses).pow(2).cpu()  # [n_rows]
    if not bool(weights.sum() > 0):
        weights = torch.ones_like(weights)
    picks = torch.multinomial(
        weights, len(dead_idx), replacement=len(dead_idx) > len(x), generator=state.generator
    )
    directions = x[picks].to(sae.b_dec.device) - sae.b_dec
    directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-8)  # [n_dead, d_in]
    alive_norms = sae.W_enc[:, ~dead].norm(dim=0)
    scale = resample_encoder_scale(state.cfg) * (float(alive_norms.mean()) if len(alive_norms) else 1.0)
    sae.W_dec[dead_idx] = directions
    sae.W_enc[:, dead_idx] = directions.T * scale
    sae.b_enc[dead_idx] = 0.0
    for param, index in (
        (sae.W_dec, (dead_idx,)),
        (sae.W_enc, (slice(None), dead_idx)),
        (sae.b_enc, (dead_idx,)),
        *sae.variant.resample_extra(sae, dead_idx, dead),
    ):
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in state.optimizer.state.get(param, {}):
                state.optimizer.state[param][moment][index] = 0.0
    state.steps_since_fired[dead_idx] = 0
    return ResampleResult(step=state.step, n_dead=len(dead_idx))


def maybe_resample(state: TrainState) -> ResampleResult | None:
    if state.step in resample_steps(state.cfg):
        return resample_dead_latents(state)
    return None
