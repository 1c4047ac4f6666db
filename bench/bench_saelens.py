"""SAELens's own training step against ours, at the paper's shape (512 -> 4096, batch 4096).

SAELens lives in its own virtualenv (it pins other versions of many packages): created at
--venv with `pip install torch==2.13.0 sae-lens` if it is missing, unless --no-install. Its step
is the body of `SAETrainer._train_step` (training_forward_pass, firing bookkeeping, backward,
gradient clipping, Adam) on its StandardTrainingSAE (L1, the paper's recipe) and TopKTrainingSAE,
in fp32 and with its `autocast` option (bf16); ours is `train_step` (bf16). Best of a few steps.

    /work/venv/bin/python bench/bench_saelens.py [--venv /tmp/saelens-venv] [--no-install]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from saelens_venv import DEFAULT_VENV, ensure_venv, saelens_version

SAELENS_STEP = r"""
import contextlib, json, sys, time
import torch
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

d_in, d_sae, batch, k, steps = (int(a) for a in sys.argv[1:6])
x = torch.randn(batch, d_in, generator=torch.Generator().manual_seed(0)).relu()
results = {}
for name, make in (
    ("standard", lambda: StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=5e-3))),
    ("topk", lambda: TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))),
):
    for autocast in (False, True):
        sae = make()
        optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
        coefficients = {n: c.value for n, c in sae.get_coefficients().items()}
        since_fired = torch.zeros(d_sae)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

        def step():  # SAETrainer._train_step, without the lr and coefficient schedulers
            global since_fired
            sae.train()
            with context:
                out = sae.training_forward_pass(TrainStepInput(
                    sae_in=x, coefficients=coefficients, dead_neuron_mask=since_fired > 1000,
                    n_training_steps=0, is_logging_step=False))
                with torch.no_grad():
                    did_fire = out.feature_acts.bool().float().sum(-2).bool()
                    since_fired += 1
                    since_fired[did_fire] = 0
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()

        step()
        best = float("inf")
        for _ in range(steps):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
        results[f"{name} {'bf16 autocast' if autocast else 'fp32'}"] = batch / best
print(json.dumps(results))
"""


def ours(d_in: int, d_sae: int, batch: int, k: int, steps: int) -> dict[str, float]:
    import torch

    from trainer.config import SAEConfig
    from trainer.sae import SparseAutoencoder, TrainState, train_step
    from trainer.sae.variants.base import peak_lr

    x = torch.randn(batch, d_in, generator=torch.Generator().manual_seed(0)).relu()
    results = {}
    for variant in ("paper", "topk"):
        cfg = SAEConfig(d_in=d_in, d_sae=d_sae, batch_size=batch, n_tokens=batch * 1000, k=k, variant=variant)  # type: ignore[arg-type]
        sae = SparseAutoencoder(cfg).train()
        state = TrainState(
            cfg=cfg,
            sae=sae,
            optimizer=torch.optim.Adam(sae.parameters(), lr=peak_lr(cfg), fused=True),
            source=None,  # type: ignore[arg-type]
            generator=torch.Generator().manual_seed(0),
            steps_since_fired=torch.zeros(d_sae, dtype=torch.long),
        )
        train_step(state, x, compute_l0=False)
        best = float("inf")
        for _ in range(steps):
            start = time.perf_counter()
            train_step(state, x, compute_l0=False)
            best = min(best, time.perf_counter() - start)
        results[variant] = batch / best
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--no-install", action="store_true", help="skip SAELens if its venv is missing")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()
    shape = [str(v) for v in (args.d_in, args.d_sae, args.batch, args.k, args.steps)]
    python = ensure_venv(args.venv, install=not args.no_install)
    mine = ours(args.d_in, args.d_sae, args.batch, args.k, args.steps)
    print(
        f"shape {args.d_in}->{args.d_sae}, batch {args.batch}, k {args.k}; tokens/s, best of {args.steps} steps"
    )
    print(f"{'ours paper (bf16)':<38}: {mine['paper']:9,.0f}")
    print(f"{'ours topk (bf16)':<38}: {mine['topk']:9,.0f}")
    if python is None:
        return
    proc = subprocess.run([str(python), "-c", SAELENS_STEP, *shape], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"SAELens's step failed:\n{proc.stderr[-2000:]}")
        return
    version = saelens_version(python)
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, tps in theirs.items():
        mine_tps = mine["paper" if name.startswith("standard") else "topk"]
        print(f"{f'SAELens {version} {name}':<38}: {tps:9,.0f}   ours is {mine_tps / tps:.2f}x")


if __name__ == "__main__":
    main()
