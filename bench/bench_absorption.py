"""Feature absorption of every SAE variant at its defaults, on planted parent/child directions.

Trains each variant on `trainer.sae.planted.planted_hierarchy` (8 parents with 3 children each in
32 dimensions; a child only ever fires with its parent) and measures on held-out rows of the same
set, per seed: absorption (share of child-present rows on which the parent's latent is silent,
mean over (parent, child)), the parent latent's recall on parent-only rows, its decoder's cosine
with its children and with its parent, and the FVU of the whole dictionary and of its first eighth
alone. Sparsity is the planted L0 (~2): k = 2 for the TopK family, target L0 2 for the others.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_absorption.py [--seeds 0 1 2] [--steps 600]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainer.config import SAE_VARIANTS
from trainer.sae import train_sae
from trainer.sae.planted import absorption, absorption_cfg, hierarchy_source, planted_hierarchy, prefix_fvu

COLUMNS = ("absorption", "parent_recall", "decoder_lean", "parent_cosine", "fvu", "fvu_first_eighth", "l0")


def one_run(variant: str, seed: int, steps: int, d_sae: int) -> dict[str, float]:
    """The measures of one variant trained on the planted set whose directions come from `seed`."""
    train, held_out = (
        planted_hierarchy(20_000, directions_seed=seed),
        planted_hierarchy(10_000, seed=1, directions_seed=seed),
    )
    cfg = absorption_cfg(variant, d_sae=d_sae, n_steps=steps, seed=seed)
    start = time.process_time()
    with tempfile.TemporaryDirectory() as out:
        sae = train_sae(cfg, hierarchy_source(train, cfg.batch_size, seed), Path(out), progress=False).sae
    cpu = time.process_time() - start
    rows = torch.from_numpy(held_out.rows)
    first_eighth, full = prefix_fvu(sae, rows, (d_sae // 8, d_sae))
    with torch.no_grad():
        l0 = float((sae.encode(rows) > 0).float().sum(1).mean())
    measured = absorption(sae, held_out)
    return {**vars(measured), "fvu": full, "fvu_first_eighth": first_eighth, "l0": l0, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(SAE_VARIANTS), choices=SAE_VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600, help="training steps of 256 rows")
    parser.add_argument("--d-sae", type=int, default=64, help="2 x the 32 planted directions")
    parser.add_argument("--json", type=Path, help="also write every run's measures here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    runs: dict[str, list[dict[str, float]]] = {}
    for variant in args.variants:
        runs[variant] = [one_run(variant, seed, args.steps, args.d_sae) for seed in args.seeds]
    print(f"{'variant':<22}" + "".join(f"{c:>17}" for c in COLUMNS) + f"{'cpu s/run':>11}")
    for variant, results in runs.items():
        cells = []
        for column in COLUMNS:
            values = [r[column] for r in results]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):>10.3f} ±{spread:<5.3f}")
        cpu = statistics.mean(r["cpu_s"] for r in results)
        print(f"{variant:<22}" + "".join(cells) + f"{cpu:>11.1f}")
    print(f"mean ± sd over seeds {args.seeds}, {args.steps} steps, d_sae {args.d_sae}; held-out rows")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}))


if __name__ == "__main__":
    main()
