"""Feature absorption of every SAE variant at its defaults, on planted parent/child directions.

Trains each variant on `trainer.sae.planted.planted_hierarchy` (8 parents with 3 children each in
32 dimensions; a child only ever fires with its parent) and measures on held-out rows of the same
set, per seed: absorption (share of child-present rows on which the parent's latent is silent,
mean over (parent, child)), the parent latent's recall on parent-only rows, its decoder's cosine
with its children and with its parent, and the FVU of the whole dictionary and of its first eighth
alone. Sparsity is the planted L0 (~2): k = 2 for the TopK family, target L0 2 for the others.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_absorption.py [--seeds 0 1 2] [--steps 600]

At the defaults (seeds 0 1 2, 600 steps of 256 rows, d_sae 64; mean ± sd; ~30 CPU s in all;
FVU 1/8: the first d_sae/8 latents alone):

    variant               absorption  parent recall  decoder lean  parent cos  FVU    FVU 1/8   L0
    paper                 0.835±0.024    0.921±0.075   0.027±0.031       0.952  0.348    0.911  1.99
    l1_decnorm            0.953±0.033    0.628±0.536   0.038±0.082       0.939  0.471    0.926  1.99
    topk                  0.748±0.005    0.764±0.008   0.076±0.001       0.910  0.124    0.954  2.00
    batchtopk             0.610±0.104    0.956±0.065   0.045±0.032       0.844  0.034    0.942  2.00
    jumprelu              0.333±0.141    0.987±0.010   0.013±0.022       0.990  0.018    0.973  1.87
    matryoshka_batchtopk  0.112±0.042    0.973±0.047   0.196±0.001       0.901  0.087    0.535  2.01

The L1-style variants at L0 2 reconstruct poorly (FVU 0.35-0.47): their silent parent latents are
partly weak ones (l1_decnorm's recall on parent-only rows is 0.63), not only absorbed ones.
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
