"""SAELens's own training step against ours, at the paper's shape (512 -> 4096, batch 4096): CPU
seconds per step of every variant of ours, and its ratio to SAELens fp32 in the same run.

SAELens lives in its own virtualenv (it pins other versions of many packages): created at
--venv with `pip install torch==2.13.0 sae-lens` if it is missing, unless --no-install. Its step
is the body of `SAETrainer._train_step` (training_forward_pass, firing bookkeeping, backward,
gradient clipping, Adam) on its StandardTrainingSAE (L1, the paper's recipe), TopKTrainingSAE,
BatchTopKTrainingSAE and JumpReLUTrainingSAE, in fp32 (and with its `autocast` option, bf16, with
--autocast). Its step is dense whatever the SAE has learnt, so a few steps on one batch time it.

Ours is `train_step` along a whole (short) training run: --steps steps with the variant's full
schedule (lr and λ warm-up, the target-L0 controller at --target-l0, resampling), because the
L1-style variants' steps get cheaper as their codes get sparse. On real activations
(--activations, a [rows, d_in] .npy such as bench_pareto's training rows) that is what a
training run costs; on the default random data the L1 variants stay dense longer.

The ratios are ours over SAELens fp32's CPU seconds per step: against its SAE of the variant's
family (standard for paper / l1_decnorm / jumprelu, topk for topk / batchtopk, as in
bench_pareto.py) and against its SAE of the same architecture.

    .venv/bin/python bench/bench_saelens.py [--activations rows.npy] [--venv /tmp/saelens-venv] [--no-install]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
from saelens_venv import DEFAULT_VENV, ensure_venv, saelens_version

SAELENS_STEP = r"""
import contextlib, json, sys, time
import numpy as np
import torch
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

d_in, d_sae, batch, k, steps, autocasts = (int(a) for a in sys.argv[1:7])
x = torch.from_numpy(np.load(sys.argv[7]))
results = {}
for name, make in (
    ("standard", lambda: StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=5.0))),
    ("topk", lambda: TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))),
    ("batchtopk", lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))),
    ("jumprelu", lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae))),
):
    for autocast in (False, True)[: 1 + autocasts]:
        torch.manual_seed(0)
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
        cpu = []
        for _ in range(steps):
            start = time.process_time()
            step()
            cpu.append(time.process_time() - start)
        results[f"{name} {'bf16 autocast' if autocast else 'fp32'}"] = sorted(cpu)[len(cpu) // 2]
print(json.dumps(results))
"""


VARIANTS = ("paper", "l1_decnorm", "jumprelu", "topk", "batchtopk")
FAMILY = {
    "paper": "standard",
    "l1_decnorm": "standard",
    "jumprelu": "standard",
    "topk": "topk",
    "batchtopk": "topk",
}
ARCHITECTURE = {
    "paper": "standard",
    "l1_decnorm": "standard",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "batchtopk": "batchtopk",
}


def training_rows(args: argparse.Namespace) -> np.ndarray:
    """[steps · batch, d_in] fp32 rows: the first ones of --activations, else random ReLU'd."""
    n_rows = args.steps * args.batch
    if args.activations is None:
        return np.maximum(np.random.default_rng(0).standard_normal((n_rows, args.d_in), dtype=np.float32), 0)
    rows = np.load(args.activations, mmap_mode="r")
    if len(rows) < n_rows:
        raise SystemExit(
            f"{args.activations} holds {len(rows):,} rows: fewer than --steps × --batch {n_rows:,}"
        )
    return np.array(rows[:n_rows], dtype=np.float32)


def ours(variant: str, rows: np.ndarray, args: argparse.Namespace) -> tuple[float, float, float]:
    """(median, mean CPU seconds per step, the last step's L0) of `variant` along a whole run of
    --steps steps over `rows`, as train_sae runs it (without reading the file or saving)."""
    from trainer.config import SAEConfig
    from trainer.sae import ActivationSource, init_train_state, maybe_resample, train_step

    sparsity = {"k": args.k} if variant in ("topk", "batchtopk") else {"target_l0": float(args.target_l0)}
    cfg = SAEConfig(
        d_in=args.d_in,
        d_sae=args.d_sae,
        variant=variant,  # type: ignore[arg-type]
        batch_size=args.batch,
        n_tokens=args.steps * args.batch,
        **sparsity,  # type: ignore[arg-type]
    )
    source = ActivationSource([lambda: rows], [len(rows)], args.d_in, args.batch, 0, False, "bench")
    state = init_train_state(cfg, source)
    cpu, l0 = [], float("nan")
    for _ in range(cfg.n_steps):
        x = next(source)
        start = time.process_time()
        stats = train_step(state, x)
        maybe_resample(state)
        cpu.append(time.process_time() - start)
        l0 = stats.l0
    return sorted(cpu)[len(cpu) // 2], sum(cpu) / len(cpu), l0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--no-install", action="store_true", help="skip SAELens if its venv is missing")
    parser.add_argument("--activations", type=Path, help="[rows, d_in] .npy to train on (default: random)")
    parser.add_argument("--steps", type=int, default=64, help="our training run's length, in steps")
    parser.add_argument("--saelens-steps", type=int, default=3, help="SAELens steps timed (median)")
    parser.add_argument("--autocast", action="store_true", help="also time SAELens under bf16 autocast")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of ours")
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=16, help="topk / batchtopk")
    parser.add_argument("--target-l0", type=float, default=16, help="paper / l1_decnorm / jumprelu")
    args = parser.parse_args()
    rows = training_rows(args)
    args.d_in = rows.shape[1]
    python = ensure_venv(args.venv, install=not args.no_install)
    theirs: dict[str, float] = {}
    if python is not None:
        batch_file = Path(f"/tmp/bench_saelens_batch_{args.d_in}_{args.batch}.npy")
        # SAELens sees inputs scaled as ours are (mean norm √d_in), so λ = 5 means the same.
        first = rows[: args.batch]
        np.save(batch_file, first * (args.d_in**0.5 / np.linalg.norm(first, axis=1).mean()))
        shape = [str(v) for v in (args.d_in, args.d_sae, args.batch, args.k, args.saelens_steps)]
        command = [str(python), "-c", SAELENS_STEP, *shape, str(int(args.autocast)), str(batch_file)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"SAELens's step failed:\n{proc.stderr[-2000:]}")
        else:
            theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"shape {args.d_in}->{args.d_sae}, batch {args.batch}; {cpu_model()}; CPU seconds per step "
        f"(process_time); data: {args.activations or 'random ReLU(N(0, 1))'}"
    )
    if theirs:
        version = saelens_version(python) if python is not None else "?"
        for name, seconds in theirs.items():
            print(f"{f'SAELens {version} {name}':<36}: {seconds:7.3f} s  (median of {args.saelens_steps})")
    for variant in args.variants.split(","):
        median, mean, l0 = ours(variant, rows, args)
        line = f"{f'ours {variant}':<36}: {mean:7.3f} s  (mean of {args.steps}; median {median:.3f}; final L0 {l0:.1f})"
        family, same = theirs.get(f"{FAMILY[variant]} fp32"), theirs.get(f"{ARCHITECTURE[variant]} fp32")
        if family:
            line += f"  {mean / family:.2f}x SAELens {FAMILY[variant]} fp32"
        if same and ARCHITECTURE[variant] != FAMILY[variant]:
            line += f", {mean / same:.2f}x its {ARCHITECTURE[variant]}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
