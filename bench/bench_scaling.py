"""How SAE training cost grows with the dictionary size and the batch: our train_step (bf16;
paper from a fresh init, paper at a trained SAE's sparsity, topk) at d_in 512 for d_sae 1k, 4k,
16k, 64k, and at d_sae 4k for several batch sizes.
Prints tokens/s, ms/step, the peak memory the step adds, and the hours 100M training tokens would
take, as a markdown table.

Each configuration runs in its own process; "peak MB added" is its peak resident memory during
training (sampled every millisecond from /proc/self/statm) less its resident memory just before
the SAE is built: the SAE, Adam's moments and the step's activations. Times are the best of a few steps after warm-up
(the machine is shared; other load only slows a step down). Synthetic data: each row a sum of 12
random unit directions.

    /work/venv/bin/python bench/bench_scaling.py [--steps 3] [--sizes 1024,4096,16384,65536]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import cast

# 64k latents at batch 4096 would hold a 4096 x 65536 pre-activation block (0.5 GB in bf16) and
# take several seconds a step on 2 cores: measured at batch 1024 to keep the bench short.
BATCH_FOR_D_SAE = {65536: 1024}
BATCH_SIZES = (1024, 4096, 16384)


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory(threading.Thread):
    """Samples the resident memory every millisecond until stopped (torch ops release the GIL)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = resident_mb(), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.001):
            self.peak = max(self.peak, resident_mb())


def run_one(variant: str, d_sae: int, batch: int, steps: int) -> dict[str, float]:
    import torch

    from trainer.config import SAEConfig, SAEVariant
    from trainer.sae import SparseAutoencoder, TrainState, train_step
    from trainer.sae.variants import peak_lr

    d_in = 512
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(8192, d_in, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    x = torch.zeros(batch, d_in)
    for _ in range(12):
        idx = torch.randint(0, len(directions), (batch,), generator=gen)
        x += torch.rand(batch, 1, generator=gen) * directions[idx]
    baseline = resident_mb()
    sampler = PeakMemory()
    sampler.start()
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        variant=cast(SAEVariant, variant.removesuffix("-trained")),
        batch_size=batch,
        n_tokens=batch * 1000,
    )
    sae = SparseAutoencoder(cfg).train()
    if variant.endswith("-trained"):  # each latent fires on 1% of inputs, as in a trained SAE
        with torch.no_grad():
            sae.b_enc.sub_(torch.quantile(sae.pre_activations(x[:1024]), 0.99, dim=0))
    state = TrainState(
        cfg=cfg,
        sae=sae,
        optimizer=torch.optim.Adam(sae.parameters(), lr=peak_lr(cfg), fused=True),
        source=None,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(0),
        steps_since_fired=torch.zeros(d_sae, dtype=torch.long),
    )
    train_step(state, x, compute_l0=False)  # warm-up: Adam's moments, allocator
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        train_step(state, x, compute_l0=False)
        best = min(best, time.perf_counter() - start)
    sampler.done.set()
    sampler.join()
    return {"seconds": best, "peak_mb": max(sampler.peak, resident_mb()) - baseline}


def measure(variant: str, d_sae: int, batch: int, steps: int) -> dict[str, float]:
    code = (
        "import json, sys; sys.path.insert(0, 'bench'); from bench_scaling import run_one; "
        f"print(json.dumps(run_one({variant!r}, {d_sae}, {batch}, {steps})))"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def row(variant: str, d_sae: int, batch: int, result: dict[str, float]) -> str:
    tokens_per_s = batch / result["seconds"]
    hours = 100e6 / tokens_per_s / 3600
    return (
        f"| {variant} | {d_sae:,} | {batch:,} | {result['seconds'] * 1e3:,.0f} | {tokens_per_s:,.0f} "
        f"| {result['peak_mb']:,.0f} | {hours:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (best counts)")
    parser.add_argument("--sizes", default="1024,4096,16384,65536", help="d_sae values")
    parser.add_argument(
        "--variants",
        default="paper,paper-trained,topk",
        help="paper-trained: the paper recipe at a trained SAE's L0 (1%% of d_sae), not a fresh one's",
    )
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    import torch

    print(f"d_in 512, bf16 matmuls, fp32 master weights, fused Adam, {torch.get_num_threads()} threads\n")
    print("| variant | d_sae | batch | ms/step | tokens/s | peak MB added | h per 100M tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant in args.variants.split(","):
        for d_sae in (int(s) for s in args.sizes.split(",")):
            batch = BATCH_FOR_D_SAE.get(d_sae, args.batch)
            print(row(variant, d_sae, batch, measure(variant, d_sae, batch, args.steps)), flush=True)
        for batch in BATCH_SIZES:
            if batch != args.batch:
                print(row(variant, 4096, batch, measure(variant, 4096, batch, args.steps)), flush=True)
    print(
        f"\nd_sae 65,536 is measured at batch {BATCH_FOR_D_SAE[65536]:,} (see BATCH_FOR_D_SAE); "
        "cost per token is flat in the batch once it fills the cores, so training time grows "
        "linearly with tokens."
    )


if __name__ == "__main__":
    main()
