"""SAE training throughput: our train_step (bf16 autocast, fp32 master weights) against a plain fp32
PyTorch SAE step, at the paper's A/1/4096 shape (512 -> 4096, batch 4096); the machine's bf16 matmul
peak and our roofline fraction; and the final loss of a fixed-length run against the fp32 reference.

    /work/venv/bin/python bench/bench_sae_train.py [--steps 6] [--loss-steps 40]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn as nn

from trainer.config import SAEConfig
from trainer.sae import SparseAutoencoder
from trainer.train_sae import TrainState, sparsity_coefficient, train_step


class ReferenceSAE(nn.Module):
    """The straightforward version: fp32, autograd through (x − b_dec), renormalise after Adam."""

    def __init__(self, W_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor) -> None:
        super().__init__()
        self.W_enc = nn.Parameter(W_enc.clone())
        self.W_dec = nn.Parameter(W_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(W_enc.shape[1]))
        self.b_dec = nn.Parameter(b_dec.clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        return f @ self.W_dec + self.b_dec, f


def reference_step(sae: ReferenceSAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, l1: float) -> float:
    x_hat, f = sae(x)
    loss = (x_hat - x).pow(2).sum(-1).mean() + l1 * f.abs().sum(-1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
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


def make_state(cfg: SAEConfig, b_dec: torch.Tensor) -> TrainState:
    sae = SparseAutoencoder(cfg).train()
    with torch.no_grad():
        sae.b_dec.copy_(b_dec)
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, fused=True)
    return TrainState(
        cfg=cfg,
        sae=sae,
        optimizer=optimizer,
        source=None,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(0),
        steps_since_fired=torch.zeros(cfg.d_sae, dtype=torch.long),
    )


def time_steps(step: object, batches: list[torch.Tensor], warmup: int = 2) -> float:
    """Seconds per step, after `warmup` untimed steps."""
    for x in batches[:warmup]:
        step(x)  # type: ignore[operator]
    start = time.perf_counter()
    for x in batches[warmup:]:
        step(x)  # type: ignore[operator]
    return (time.perf_counter() - start) / (len(batches) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    parser.add_argument(
        "--loss-steps", type=int, default=40, help="steps of the fixed-length loss comparison"
    )
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    d_in, d_sae, batch = args.d_in, args.d_sae, args.batch
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(2 * d_sae, d_in, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    batches = [synthetic_batch(gen, directions, batch) for _ in range(args.steps + 2)]
    b_dec = batches[0].median(0).values
    flops_per_step = 10 * batch * d_in * d_sae  # 2 forward + 3 backward matmuls of 2·N·d_in·d_sae
    peak = bf16_peak_tflops()
    print(
        f"threads {torch.get_num_threads()}  bf16 matmul peak {peak:.3f} TFLOP/s  "
        f"shape {d_in}->{d_sae}  batch {batch}"
    )

    base = SAEConfig(d_in=d_in, d_sae=d_sae, batch_size=batch, n_tokens=batch * 1000, dtype="bf16")
    init = SparseAutoencoder(base)
    reference = ReferenceSAE(init.W_enc.detach(), init.W_dec.detach(), b_dec)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=base.lr)
    ref_seconds = time_steps(lambda x: reference_step(reference, ref_opt, x, base.l1_coefficient), batches)
    ref_tps = batch / ref_seconds
    print(
        f"reference fp32 paper : {ref_tps:10.0f} tokens/s  {ref_seconds * 1e3:7.1f} ms/step  "
        f"{flops_per_step / ref_seconds / 1e12:.3f} TFLOP/s"
    )
    ratios = {}
    for variant in ("paper", "topk"):
        state = make_state(replace(base, variant=variant), b_dec)
        seconds = time_steps(lambda x, s=state: train_step(s, x, compute_l0=False), batches)
        ratios[variant] = ref_seconds / seconds
        tflops = flops_per_step / seconds / 1e12
        print(
            f"ours bf16 {variant:<10} : {batch / seconds:10.0f} tokens/s  {seconds * 1e3:7.1f} ms/step  "
            f"{tflops:.3f} TFLOP/s  roofline {tflops / peak:.0%}"
        )

    # Fixed-length run from the same init: ours (bf16) against the fp32 reference, both scored in fp32.
    n_loss = args.loss_steps
    loss_batch = min(batch, 1024)
    gen = torch.Generator().manual_seed(1)
    run_batches = [synthetic_batch(gen, directions, loss_batch) for _ in range(n_loss)]
    held_out = synthetic_batch(gen, directions, 4096)
    cfg = replace(base, batch_size=loss_batch, n_tokens=loss_batch * n_loss, l1_warmup_fraction=0.0)
    state = make_state(cfg, b_dec)
    reference = ReferenceSAE(state.sae.W_enc.detach(), state.sae.W_dec.detach(), b_dec)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=cfg.lr)
    for x in run_batches:
        train_step(state, x, compute_l0=False)
        reference_step(reference, ref_opt, x, cfg.l1_coefficient)
    l1 = sparsity_coefficient(cfg, n_loss)
    with torch.no_grad():
        losses = []
        for model in (state.sae.eval(), reference):
            x_hat, f = model(held_out)
            losses.append(float((x_hat - held_out).pow(2).sum(-1).mean() + l1 * f.sum(-1).mean()))
    ours, ref = losses
    print(
        f"final held-out loss after {n_loss} steps: ours {ours:.4f}  reference {ref:.4f}  "
        f"difference {abs(ours - ref) / ref:.2%} ({'within' if abs(ours - ref) <= 0.02 * ref else 'OUTSIDE'} 2%)"
    )
    print(f"speedup over fp32 reference: paper {ratios['paper']:.2f}x  topk {ratios['topk']:.2f}x")


if __name__ == "__main__":
    main()
