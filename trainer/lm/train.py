"""Train the one-layer transformer on the tokenised corpus (nanoGPT-style loop).

AdamW with linear warm-up and cosine decay; bf16 autocast on CPU when `dtype == "bf16"` (this
machine's AMX units make bf16 matmuls several times faster than fp32, and a model this small
converges the same). Batches are a pure function of (seed, step), so a resumed run sees exactly
the data an uninterrupted one would, and a checkpoint needs no data-loader state.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trainer.checkpoint import atomic_torch_save, atomic_write_text, load_training_state
from trainer.config import LMTrainConfig, ModelConfig
from trainer.guard import check_finite
from trainer.lm.model import OneLayerTransformer

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class LMTrainResult:
    steps: int
    final_train_loss: float
    val_loss: float
    tokens_per_second: float
    log: list[dict[str, float]]


def autocast(dtype: str) -> contextlib.AbstractContextManager[None]:
    if dtype == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sample_batch(
    tokens: np.ndarray, n_ctx: int, batch_size: int, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of n_ctx + 1 tokens, chosen by (seed, step) alone: [batch, n_ctx] inputs and targets."""
    if len(tokens) <= n_ctx + 1:
        raise ValueError(f"token stream of {len(tokens)} tokens is shorter than one context of {n_ctx + 1}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - n_ctx - 1, size=batch_size)
    windows = np.stack([np.asarray(tokens[s : s + n_ctx + 1], dtype=np.int64) for s in starts])
    data = torch.from_numpy(windows)
    return data[:, :-1], data[:, 1:]


@torch.no_grad()
def evaluate_lm(
    model: OneLayerTransformer, tokens: np.ndarray, dtype: str, n_batches: int = 8, batch_size: int = 32
) -> float:
    """Mean next-token loss on fixed windows of `tokens` (held-out split)."""
    model.eval()
    losses = []
    for i in range(n_batches):
        x, y = sample_batch(tokens, model.cfg.n_ctx, batch_size, seed=12345, step=i)
        with autocast(dtype):
            out = model(x, y)  # fp32 loss: evaluation figures are reported
        assert out.loss is not None  # nosec B101  # narrows the type for mypy; never false
        losses.append(out.loss.item())
    model.train()
    return float(np.mean(losses))


def learning_rate(cfg: LMTrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.n_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: OneLayerTransformer, cfg: LMTrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def train_step(
    model: OneLayerTransformer,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: str,
    step: int = 0,
) -> float:
    """One AdamW step on (x, y); raises DivergenceError naming `step` (1-based) before a
    non-finite loss or gradient can reach the weights."""
    with autocast(dtype):
        out = model(x, y, fp32_loss=False)
    assert out.loss is not None  # nosec B101  # narrows the type for mypy; never false
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    check_finite("train-lm", step, out.loss, grad_norm)
    optimizer.step()
    return out.loss.item()


def train_lm(
    model_cfg: ModelConfig,
    cfg: LMTrainConfig,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    out_dir: Path,
    resume: bool = False,
    stop_after_step: int | None = None,
) -> LMTrainResult:
    """Train and save to `out_dir` (model.safetensors, config.json, training_log.json).

    With `resume`, continue from `out_dir/checkpoint.pt`. `stop_after_step` ends early after
    checkpointing (for tests of resumption)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = OneLayerTransformer(model_cfg)
    optimizer = make_optimizer(model, cfg)
    start_step, log = 0, []
    checkpoint_path = out_dir / CHECKPOINT_NAME
    if resume and checkpoint_path.exists():
        state = load_training_state(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, log = state["step"], state["log"]
    model.train()
    n_ctx = model_cfg.n_ctx
    started = time.perf_counter()
    loss = float("nan")
    bar = tqdm(range(start_step, cfg.n_steps), desc="train-lm", initial=start_step, total=cfg.n_steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        x, y = sample_batch(train_tokens, n_ctx, cfg.batch_size, cfg.seed, step)
        loss = train_step(model, optimizer, x, y, cfg.dtype, step=step + 1)
        entry: dict[str, float] = {"step": step + 1, "train_loss": loss}
        last = step + 1 == cfg.n_steps
        if (step + 1) % cfg.eval_interval == 0 or last:
            entry["val_loss"] = evaluate_lm(model, val_tokens, cfg.dtype)
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{entry['val_loss']:.3f}")
        elif step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
        log.append(entry)
        if (step + 1) % cfg.checkpoint_interval == 0 or last:
            atomic_torch_save(
                {
                    "step": step + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "log": log,
                    "config": asdict(cfg),
                },
                checkpoint_path,
            )
            if stop_after_step is not None and step + 1 >= stop_after_step and not last:
                break
    elapsed = time.perf_counter() - started
    steps_done = len(log) - 0
    model.save(out_dir)
    atomic_write_text(out_dir / "training_log.json", json.dumps(log))
    val_losses = [e["val_loss"] for e in log if "val_loss" in e]
    trained = (
        cfg.n_steps - start_step
        if stop_after_step is None
        else max(0, min(stop_after_step, cfg.n_steps) - start_step)
    )
    return LMTrainResult(
        steps=steps_done,
        final_train_loss=loss,
        val_loss=val_losses[-1] if val_losses else float("nan"),
        tokens_per_second=trained * cfg.batch_size * n_ctx / max(elapsed, 1e-9),
        log=log,
    )
