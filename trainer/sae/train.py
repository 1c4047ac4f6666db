"""Train a sparse autoencoder on harvested MLP activations (Bricken et al. 2023, appendix
"Autoencoder Training"), with any of the variants of trainer.sae.variants.

The loop is small named steps: `train_step` (the variant's loss, one Adam step, the unit-norm
decoder constraint for the variants that keep it), `maybe_resample` (trainer.sae.resample) and
`maybe_checkpoint`. Everything that must resume lives in one checkpoint (`checkpoint.pt`, the
`TrainState`), written atomically every `checkpoint_interval` steps; `resume=True` continues
bit-for-bit.

Data parallelism (`torchrun`, see trainer.distributed): each rank takes its slice of every global
batch; one all-reduce per step sums the gradients and the step's statistics.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trainer.checkpoint import atomic_torch_save, atomic_write_text, load_training_state
from trainer.config import RunConfig, SAEConfig
from trainer.distributed import all_reduce_sum_, is_main_process, rank_rows, world_size
from trainer.guard import check_finite
from trainer.sae.autoencoder import SparseAutoencoder
from trainer.sae.resample import maybe_resample
from trainer.sae.revive import raise_dead_biases
from trainer.sae.source import ActivationSource, open_activation_source
from trainer.sae.state import StepStats, TrainState, init_train_state
from trainer.sae.variants import peak_lr

CHECKPOINT_FILE = "checkpoint.pt"
TRAINING_LOG_FILE = "training_log.json"
LOG_POINTS = 500  # about this many rows in training_log.json


# ---------------------------------------------------------------------------- the schedules


def learning_rate(cfg: SAEConfig, step: int) -> float:
    """Adam's lr at `step` (1-based): linear warm-up over the first lr_warmup_fraction of the run,
    flat, then linear decay to 0 over the last lr_decay_fraction (Anthropic, April 2024: decay
    over the last 20%). The decay lets a short run settle instead of ending mid-stride."""
    n_steps = cfg.n_steps
    warmup, decay = round(cfg.lr_warmup_fraction * n_steps), round(cfg.lr_decay_fraction * n_steps)
    factor = 1.0
    if warmup > 0:
        factor = min(factor, step / warmup)
    if decay > 0:
        factor = min(factor, (n_steps - step + 1) / decay)
    return peak_lr(cfg) * factor


def adapt_sparsity_coefficient(state: TrainState, l0: float) -> None:
    """The target-L0 controller: nudge log λ by gain · log((L0 + 1)/(target + 1)) (clipped to ±gain
    per step), so that λ grows while the batch's L0 is above the target and shrinks below it.
    Multiplicative steps find λ's scale whatever the data (it spans decades).

    During λ's warm-up the ramp raises λ anyway, so the controller only lowers it there: when the
    ramp alone has pushed L0 below the target. Left idle until the ramp's end, it had to climb back
    from there in the second half (jumprelu at target 32: L0 10 at mid-run, 27 at the end)."""
    cfg = state.cfg
    if cfg.target_l0 is None or not state.sae.variant.uses_sparsity_coefficient:
        return
    error = math.log((l0 + 1.0) / (cfg.target_l0 + 1.0))
    if state.step <= round(cfg.l1_warmup_fraction * cfg.n_steps):
        error = min(error, 0.0)
    state.log_l1_factor += cfg.target_l0_gain * max(-1.0, min(1.0, error))


# ---------------------------------------------------------------------------- the steps


def all_reduce_step(sae: SparseAutoencoder, stats: torch.Tensor) -> torch.Tensor:
    """Data parallelism: average the gradients over the ranks and sum `stats`, in one all-reduce
    of one flat buffer (a handful of tensors; bucketing and overlap buy nothing on a CPU)."""
    size = world_size()
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [stats])
    all_reduce_sum_(flat)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad)).div_(size)
        offset += grad.numel()
    return flat[offset:]


def train_step(state: TrainState, x: torch.Tensor, compute_l0: bool = True) -> StepStats:
    """One Adam step on the batch x [N, d_in] (this process's rows of it under data parallelism);
    updates the fired-recently counters."""
    sae, cfg = state.sae, state.cfg
    step = state.step + 1
    compute_l0 = compute_l0 or cfg.target_l0 is not None  # the controller reads every step's L0
    for group in state.optimizer.param_groups:
        group["lr"] = learning_rate(cfg, step) * group.get("lr_scale", 1.0)
    terms = sae.variant.loss_terms(state, x, step, count_active=compute_l0)
    state.optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    # [loss, mse, sparsity, active, fired...]: summed over the ranks with the gradients.
    active = terms.active if terms.active is not None else terms.loss.new_zeros(())
    stats = torch.cat(
        [torch.stack([terms.loss, terms.mse, terms.sparsity, active]).detach().float(), terms.fired]
    )
    size = world_size()
    if size > 1:
        stats = all_reduce_step(sae, stats)
        stats[:3] /= size
    # After the all-reduce, so every rank sees the same verdict; before the step touches the weights.
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in sae.parameters() if p.grad is not None])
    check_finite("train-sae", step, stats[0], grad_norm)
    if sae.variant.unit_norm_decoder:
        sae.remove_parallel_decoder_grad()
    state.optimizer.step()
    if sae.variant.unit_norm_decoder:
        sae.normalize_decoder()
    if terms.revive is not None:
        raise_dead_biases(sae.b_enc, *terms.revive)
    with torch.no_grad():
        fired = stats[4:] > 0
        state.steps_since_fired = torch.where(fired, 0, state.steps_since_fired + 1)
    loss, mse, sparsity, n_active = stats[:4].tolist()
    state.step = step
    l0 = n_active / (x.shape[0] * size) if compute_l0 else float("nan")
    adapt_sparsity_coefficient(state, l0)
    return StepStats(
        step=step,
        loss=loss,
        mse=mse,
        sparsity_loss=sparsity,
        l0=l0,
        dead=int(state.dead_mask.sum()),
        sparsity_coefficient=sae.variant.sparsity_weight(state, step),
        lr=learning_rate(cfg, step),
    )


def maybe_checkpoint(state: TrainState, path: Path, force: bool = False) -> bool:
    """Write the checkpoint at its interval and at the end (rank 0 only: the ranks are in step)."""
    if not is_main_process():
        return False
    if force or state.step % state.cfg.checkpoint_interval == 0 or state.step == state.cfg.n_steps:
        atomic_torch_save(state.state_dict(), path)
        return True
    return False


# ---------------------------------------------------------------------------- the loop


@dataclass
class TrainSAEResult:
    sae: SparseAutoencoder
    n_steps: int
    final: StepStats | None  # None when a finished run was resumed
    log: list[dict[str, float]]
    resamples: list[dict[str, int]]
    out_dir: Path


def _log_row(stats: StepStats) -> dict[str, float]:
    return {
        "step": stats.step,
        "loss": stats.loss,
        "mse": stats.mse,
        "sparsity_loss": stats.sparsity_loss,
        "l0": stats.l0,
        "dead": stats.dead,
        "sparsity_coefficient": stats.sparsity_coefficient,
        "lr": stats.lr,
    }


def write_training_log(state: TrainState, out_dir: Path) -> None:
    payload = {
        "variant": state.cfg.variant,
        "sparsity_loss": state.sae.variant.sparsity_loss_name,
        "mse": "squared error summed over d_in, mean over the batch",
        "rows": state.log,
        "resamples": state.resamples,
    }
    atomic_write_text(out_dir / TRAINING_LOG_FILE, json.dumps(payload, indent=1))


def train_sae(
    cfg: RunConfig | SAEConfig,
    activations: ActivationSource | Path | str,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[TrainState, StepStats], None] | None = None,
    model_name: str = "monosemantic-1l",
    device: torch.device | str | None = None,
) -> TrainSAEResult:
    """Train to `cfg.n_steps`, checkpointing into out_dir; save the SAE (SAELens layout) and
    training_log.json there. `resume=True` continues from out_dir/checkpoint.pt if it exists.

    On `device` (default: a RunConfig's `device`, else the CPU). Inside a torch.distributed process
    group (`trainer.distributed.init_from_env`) each rank trains on its slice of every global batch
    of `batch_size` rows and only rank 0 writes files; the result is the single-process one."""
    sae_cfg = cfg.sae if isinstance(cfg, RunConfig) else cfg
    if device is None:
        device = cfg.device if isinstance(cfg, RunConfig) else "cpu"
    context_size = cfg.model.n_ctx if isinstance(cfg, RunConfig) else None
    source = (
        activations
        if isinstance(activations, ActivationSource)
        else open_activation_source(Path(activations), None, sae_cfg.batch_size, sae_cfg.seed)
    )
    # The SAE's width is the data's: nobody sets d_in by hand.
    sae_cfg = dataclasses.replace(sae_cfg, d_in=source.d_in)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source.local_rows = rank_rows(sae_cfg.batch_size)
    state = init_train_state(sae_cfg, source, device)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    if resume and checkpoint_path.exists():
        state.load_state_dict(load_training_state(checkpoint_path), checkpoint_path)

    n_steps = sae_cfg.n_steps
    log_every = max(1, n_steps // LOG_POINTS)
    final: StepStats | None = None
    bar = tqdm(
        total=n_steps,
        initial=state.step,
        disable=not progress or not is_main_process(),
        desc=f"sae {sae_cfg.variant}",
        unit="step",
        dynamic_ncols=True,
    )
    while state.step < n_steps:
        is_log_step = (state.step + 1) % log_every == 0 or state.step + 1 == n_steps
        x = next(source).to(device, non_blocking=True)
        final = train_step(state, x, compute_l0=is_log_step)
        if maybe_resample(state) is not None:
            final.dead = int(state.dead_mask.sum())
        if is_log_step:
            state.log.append(_log_row(final))
            bar.set_postfix(loss=f"{final.loss:.4g}", l0=f"{final.l0:.1f}", dead=final.dead, refresh=False)
        maybe_checkpoint(state, checkpoint_path)
        bar.update(1)
        if on_step is not None:
            on_step(state, final)
    bar.close()
    state.sae.variant.finish_training(state)
    state.sae.eval()
    # Trained on x · s: fold s in, so the saved SAE reads raw activations (SAELens's
    # normalize_activations "none") and reports activations in their units.
    state.sae.fold_input_scale(state.input_scale)
    state.sae.training_record = {
        "input_scale": state.input_scale,
        "sparsity_coefficient": state.sae.variant.sparsity_weight(state, n_steps),
        "target_l0": sae_cfg.target_l0,
        "n_steps": n_steps,
        "n_tokens": n_steps * sae_cfg.batch_size,
        "activations": source.name,
        **source.recorded_model,  # the harvest's model digest and hook, checked by evaluate
    }
    if isinstance(cfg, RunConfig) and cfg.hook:  # the hook it was harvested at (trainer/lm/hooks.py)
        state.sae.hook_name = cfg.hook
    if is_main_process():
        state.sae.save(out_dir, model_name=model_name, context_size=context_size)
        write_training_log(state, out_dir)
    return TrainSAEResult(
        sae=state.sae, n_steps=n_steps, final=final, log=state.log, resamples=state.resamples, out_dir=out_dir
    )
