"""The cost of the non-finite guard (trainer/guard.py) per training step: SAE steps at the paper's
A/1/4096 shape (512 -> 4096, batch 4096) and LM steps of the demo model, each timed with the guard
and with it switched off, in interleaved rounds (the machine is shared: the best round counts).

    .venv/bin/python bench/bench_guard.py [--rounds 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import trainer.lm.train as lm_train
import trainer.sae.train as sae_train
from trainer.config import LMTrainConfig, ModelConfig, SAEConfig
from trainer.lm.model import OneLayerTransformer
from trainer.sae import ActivationSource, TrainState, init_train_state, open_activation_source, train_step


@contextmanager
def guard_off() -> Iterator[None]:
    """Both check_finite calls and the SAE's extra gradient norm replaced by nothing."""
    saved = sae_train.check_finite, lm_train.check_finite, torch.nn.utils.get_total_norm
    sae_train.check_finite = lm_train.check_finite = lambda *args: None  # type: ignore[assignment]
    torch.nn.utils.get_total_norm = lambda *args, **kwargs: torch.zeros(())  # type: ignore[assignment]
    try:
        yield
    finally:
        sae_train.check_finite, lm_train.check_finite, torch.nn.utils.get_total_norm = saved


def best_seconds(step: Callable[[], None], steps: int, rounds: int, guarded: bool) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        if guarded:
            for _ in range(steps):
                step()
        else:
            with guard_off():
                for _ in range(steps):
                    step()
        times.append((time.perf_counter() - started) / steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    acts = np.random.default_rng(0).standard_normal((4096 * 4, 512)).astype(np.float32)
    cfg = SAEConfig(d_in=512, d_sae=4096, batch_size=4096, n_tokens=4096 * 1000, variant="topk", k=16)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "acts.npy", acts)
        source = open_activation_source(Path(tmp) / "acts.npy", None, cfg.batch_size, cfg.seed)
        state = init_train_state(cfg, source)
        run(args, state, source)


def run(args: argparse.Namespace, state: TrainState, source: ActivationSource) -> None:

    model_cfg = ModelConfig()
    lm_cfg = LMTrainConfig(batch_size=32)
    model = OneLayerTransformer(model_cfg)
    optimizer = lm_train.make_optimizer(model, lm_cfg)
    tokens = np.random.default_rng(1).integers(0, model_cfg.vocab_size, 200_000).astype(np.uint16)
    x, y = lm_train.sample_batch(tokens, model_cfg.n_ctx, lm_cfg.batch_size, 0, 0)

    benches = {
        "sae topk 512->4096, batch 4096": lambda: train_step(state, next(source), compute_l0=False),
        "lm demo model, batch 32": lambda: lm_train.train_step(model, optimizer, x, y, lm_cfg.dtype),
    }
    for name, step in benches.items():
        step()  # warm up
        on, off = [], []
        for _ in range(args.rounds):  # interleaved, so drifting load hits both alike
            on += best_seconds(step, args.steps, 1, guarded=True)
            off += best_seconds(step, args.steps, 1, guarded=False)
        print(
            f"{name}: {min(on) * 1e3:.1f} ms/step guarded, {min(off) * 1e3:.1f} ms/step unguarded: "
            f"guard costs {min(on) / min(off) - 1:+.2%} of a step"
        )


if __name__ == "__main__":
    main()
