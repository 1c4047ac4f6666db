"""SAE training throughput: our train_step (hand-written bf16 backward for paper, sparse-aware for
topk, fp32 master weights, fused Adam) against plain PyTorch steps of the same SAE (SAELens-like:
autograd through the straightforward forward, Adam, decoder renormalised), in fp32 and under bf16
autocast, at the paper's A/1/4096 shape (512 -> 4096, batch 4096). Also the machine's bf16 matmul
peak, our roofline fraction, and each variant's final held-out loss after a fixed-length run
against the fp32 reference's.

The machine is shared: each configuration is timed in several rounds, interleaved with the
references, and the best round counts (other load only slows a round down).

    /work/venv/bin/python bench/bench_sae_train.py [--rounds 3] [--steps 2] [--loss-steps 30]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import partial

import torch
import torch.nn as nn

from trainer.config import SAEConfig
from trainer.sae import SparseAutoencoder, TrainState, sparsity_coefficient, train_step
from trainer.sae.variants import peak_lr

TRAINED_DENSITY = 0.01  # L0 = 1% of d_sae (41 of 4096), a trained paper-recipe SAE's sparsity


class ReferenceSAE(nn.Module):
    """The straightforward version: autograd through (x − b_dec), ReLU or TopK, dense decoder."""

    def __init__(
        self,
        W_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor,
        k: int | None,
    ) -> None:
        super().__init__()
        self.W_enc = nn.Parameter(W_enc.clone())
        self.W_dec = nn.Parameter(W_dec.clone())
        self.b_enc = nn.Parameter(b_enc.clone())
        self.b_dec = nn.Parameter(b_dec.clone())
        self.k = k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        if self.k is None:
            f = torch.relu(pre)
        else:  # SAELens's TopK: the k largest, ReLU'd, scattered back
            values, indices = torch.topk(pre, self.k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, indices, values.relu())
        return f @ self.W_dec + self.b_dec, f


def reference_step(
    sae: ReferenceSAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, l1: float, bf16: bool
) -> float:
    context: AbstractContextManager[None] = (
        torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    )
    with context:
        x_hat, f = sae(x)
        loss = (x_hat.float() - x).pow(2).sum(-1).mean()
        if sae.k is None:
            loss = loss + l1 * f.float().abs().sum(-1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
    return float(loss.detach())


def synthetic_batch(
    generator: torch.Generator, directions: torch.Tensor, n: int, active: int = 12
) -> torch.Tensor:
    """Superposition data: each row a sum of `active` random dictionary directions."""
    idx = torch.randint(0, len(directions), (n, active), generator=generator)
    values = torch.rand(n, active, generator=generator) + 0.5
    return (values[..., None] * directions[idx]).sum(1)


def bf16_peak_tflops(n: int = 4096, d: int = 512, repeats: int = 8, rounds: int = 5) -> float:
    """Best of a few rounds of [n, d] @ [d, n] in bf16 (other load on the machine only lowers it)."""
    a, b = torch.randn(n, d, dtype=torch.bfloat16), torch.randn(d, n, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n * d * n * repeats / (time.perf_counter() - start) / 1e12)
    return best


def make_state(cfg: SAEConfig, b_dec: torch.Tensor, fire_on: torch.Tensor | None = None) -> TrainState:
    """A fresh SAE; with `fire_on` [N, d_in], encoder biases set so that each latent fires on
    TRAINED_DENSITY of those rows, as in a trained SAE (a fresh one fires on half of them)."""
    sae = SparseAutoencoder(cfg).train()
    with torch.no_grad():
        sae.b_dec.copy_(b_dec)
        if fire_on is not None:
            pre = sae.pre_activations(fire_on[:2048])
            sae.b_enc.sub_(torch.quantile(pre, 1 - TRAINED_DENSITY, dim=0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=peak_lr(cfg), fused=True)
    return TrainState(
        cfg=cfg,
        sae=sae,
        optimizer=optimizer,
        source=None,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(0),
        steps_since_fired=torch.zeros(cfg.d_sae, dtype=torch.long),
    )


def make_reference(state: TrainState, b_dec: torch.Tensor) -> tuple[ReferenceSAE, torch.optim.Optimizer]:
    k = state.cfg.k if state.cfg.variant == "topk" else None
    sae = ReferenceSAE(state.sae.W_enc.detach(), state.sae.W_dec.detach(), state.sae.b_enc.detach(), b_dec, k)
    return sae, torch.optim.Adam(sae.parameters(), lr=peak_lr(state.cfg))


def best_seconds(
    steps: dict[str, Callable[[torch.Tensor], object]], batches: list[torch.Tensor], rounds: int
) -> dict[str, float]:
    """Seconds per step of each named step function: best round of len(batches) steps, the
    configurations interleaved round by round; one untimed warm-up step each first."""
    for step in steps.values():
        step(batches[0])
    best = {name: float("inf") for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for x in batches:
                step(x)
            best[name] = min(best[name], (time.perf_counter() - start) / len(batches))
    return best


def matmul_flops(name: str, batch: int, d_in: int, d_sae: int, active: float) -> float:
    """The work a step cannot avoid: with dense activations (a fresh paper SAE) 5 dense matmuls
    (2 forward, 3 backward); with `active` latents per row (topk, a trained paper SAE) the dense
    encoder matmul and four N·active·d_in sparse products (decoder, the activations' gradient,
    both weight gradients)."""
    if name == "paper":
        return 10 * batch * d_in * d_sae
    return 2 * batch * d_in * d_sae + 4 * 2 * batch * active * d_in


def final_losses(
    cfg: SAEConfig, directions: torch.Tensor, b_dec: torch.Tensor, n_steps: int, batch: int, trained: bool
) -> tuple[float, float]:
    """Held-out loss (fp32) of ours and of the fp32 reference after n_steps from the same init."""
    gen = torch.Generator().manual_seed(1)
    run_batches = [synthetic_batch(gen, directions, batch) for _ in range(n_steps)]
    held_out = synthetic_batch(gen, directions, 4096)
    cfg = replace(cfg, batch_size=batch, n_tokens=batch * n_steps, l1_warmup_fraction=0.0)
    state = make_state(cfg, b_dec, fire_on=run_batches[0] if trained else None)
    reference, ref_opt = make_reference(state, b_dec)
    for x in run_batches:
        train_step(state, x, compute_l0=False)
        reference_step(reference, ref_opt, x, cfg.l1_coefficient, bf16=False)
    l1 = sparsity_coefficient(cfg, n_steps) if cfg.variant == "paper" else 0.0
    losses = []
    with torch.no_grad():
        for model in (state.sae.eval(), reference):
            x_hat, f = model(held_out)
            losses.append(float((x_hat - held_out).pow(2).sum(-1).mean() + l1 * f.sum(-1).mean()))
    return losses[0], losses[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best counts)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round and configuration")
    parser.add_argument(
        "--loss-steps", type=int, default=30, help="steps of the fixed-length loss comparison"
    )
    parser.add_argument("--loss-batch", type=int, default=1024)
    parser.add_argument(
        "--variants",
        default="paper,paper-trained,topk",
        help="paper-trained: the paper recipe at a trained SAE's L0 (1%% of d_sae) instead of a fresh one's",
    )
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()
    d_in, d_sae, batch = args.d_in, args.d_sae, args.batch
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(2 * d_sae, d_in, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    batches = [synthetic_batch(gen, directions, batch) for _ in range(args.steps)]
    b_dec = batches[0].median(0).values
    peak = bf16_peak_tflops()
    print(
        f"threads {torch.get_num_threads()}  bf16 matmul peak {peak:.3f} TFLOP/s  "
        f"shape {d_in}->{d_sae}  batch {batch}  k {args.k}  best of {args.rounds} rounds x {args.steps} steps"
    )
    base = SAEConfig(d_in=d_in, d_sae=d_sae, batch_size=batch, n_tokens=batch * 1000, k=args.k, dtype="bf16")
    summary = []
    for name in args.variants.split(","):
        variant = name.removesuffix("-trained")
        cfg = replace(base, variant=variant)  # type: ignore[arg-type]
        state = make_state(cfg, b_dec, fire_on=batches[0] if name.endswith("-trained") else None)
        ref32, opt32 = make_reference(state, b_dec)
        ref16, opt16 = make_reference(state, b_dec)
        seconds = best_seconds(
            {
                "fp32": partial(reference_step, ref32, opt32, l1=base.l1_coefficient, bf16=False),
                "bf16": partial(reference_step, ref16, opt16, l1=base.l1_coefficient, bf16=True),
                "ours": partial(train_step, state, compute_l0=False),
            },
            batches,
            args.rounds,
        )
        active = {"paper": d_sae, "paper-trained": TRAINED_DENSITY * d_sae, "topk": args.k}[name]
        flops = matmul_flops(name, batch, d_in, d_sae, active)
        for key, label in (("fp32", "plain fp32"), ("bf16", "plain bf16 autocast"), ("ours", "ours")):
            s = seconds[key]
            extra = f"  roofline {flops / s / 1e12 / peak:.0%}" if key == "ours" else ""
            print(f"{name:<13} {label:<20}: {batch / s:9.0f} tokens/s  {s * 1e3:7.1f} ms/step{extra}")
        trained = name.endswith("-trained")
        ours, ref = final_losses(
            cfg, directions, b_dec, args.loss_steps, min(batch, args.loss_batch), trained
        )
        gap = abs(ours - ref) / ref
        print(
            f"{name:<13} held-out loss after {args.loss_steps} steps: ours {ours:.4f}  fp32 reference {ref:.4f}  "
            f"difference {gap:.2%} ({'within' if gap <= 0.02 else 'OUTSIDE'} 2%)"
        )
        summary.append(
            f"{name}: {seconds['fp32'] / seconds['ours']:.2f}x fp32 (target 5x), "
            f"{seconds['bf16'] / seconds['ours']:.2f}x bf16 autocast (target 3x), "
            f"roofline {flops / seconds['ours'] / 1e12 / peak:.0%}, loss gap {gap:.2%}"
        )
    print("speedup of ours over the plain steps:")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    main()
