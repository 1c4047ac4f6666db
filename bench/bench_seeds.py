"""The demo SAE's held-out figures over several seeds: how much of a README number is the seed.

Trains the run's SAE (its preset's `sae` config, only `seed` changed) on the run's harvested
activations once per seed, evaluates each on the held-out text like `monosemantic evaluate`, and
prints L0, FVU, dead %, dense % and CE loss recovered per seed with their mean and spread.

    .venv/bin/python bench/bench_seeds.py --run runs/demo [--preset demo] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from trainer.config import preset_config
from trainer.corpus.tokenizer import load_token_split
from trainer.evaluate import evaluate_sae
from trainer.lm.model import OneLayerTransformer
from trainer.sae import train_sae

METRICS = ("l0", "fvu", "dead_pct", "dense_pct", "ce_loss_recovered_pct")


def one_seed(run: Path, preset: str, seed: int, work: Path) -> dict[str, float]:
    cfg = preset_config(preset, out_dir=str(run))
    sae_cfg = dataclasses.replace(cfg.sae, seed=seed)
    start = time.perf_counter()
    result = train_sae(sae_cfg, cfg.activations_dir, work / f"seed{seed}", progress=False)
    wall = time.perf_counter() - start
    model = OneLayerTransformer.load(cfg.lm_dir)
    metrics = evaluate_sae(
        model, result.sae, load_token_split(cfg.tokens_dir, "val"), cfg.eval, model.cfg.n_ctx
    )
    return {
        "seed": seed,
        "l0": metrics.l0,
        "fvu": metrics.fvu,
        "dead_pct": 100 * metrics.dead_fraction,
        "dense_pct": 100 * metrics.dense_fraction,
        "ce_loss_recovered_pct": 100 * metrics.ce_loss_recovered,
        "train_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, default=Path("runs/demo"), help="a run with lm/, tokens/, activations/"
    )
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    cpu = subprocess.run(
        ["grep", "-m1", "model name", "/proc/cpuinfo"], capture_output=True, text=True
    ).stdout
    print(f"{cpu.strip()}; preset {args.preset}, activations {args.run / 'activations'}")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            rows.append(one_seed(args.run, args.preset, seed, Path(work)))
            print(json.dumps({k: round(v, 4) for k, v in rows[-1].items()}), flush=True)
    print("| metric | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | mean | spread (max − min) |")
    print("| --- |" + " --- |" * (len(rows) + 2))
    for metric in METRICS:
        values = [r[metric] for r in rows]
        cells = " | ".join(f"{v:.3g}" for v in values)
        print(f"| {metric} | {cells} | {statistics.mean(values):.3g} | {max(values) - min(values):.2g} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
