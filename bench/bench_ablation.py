"""What the ablation pass (the feature pages' blue/red underlines) adds to `analyze`: its time as a
share of the other analysis stages, measured in the same run (wall and CPU seconds per stage).

On a trained run's model and SAE (an SAE of any size trained on its MLP), for the SAE's features
and the MLP's neurons:

    python bench/bench_ablation.py --run runs/demo [--sae runs/demo/sae_topk_4096] [--tokens 1000000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from trainer.analysis.analyze import analyze_run, neuron_basis, sae_basis
from trainer.config import AnalysisConfig
from trainer.corpus.tokenizer import load_token_split
from trainer.lm.model import OneLayerTransformer
from trainer.sae import SparseAutoencoder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="run directory: lm/ and tokens/")
    parser.add_argument("--sae", type=Path, help="SAE directory (default: the run's only sae_* folder)")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="held-out tokens analysed")
    args = parser.parse_args()
    sae_dir = args.sae or next(args.run.glob("sae_*"))
    model = OneLayerTransformer.load(args.run / "lm")
    sae = SparseAutoencoder.load(sae_dir).eval()
    val = load_token_split(args.run / "tokens", "val")
    cfg = AnalysisConfig(n_tokens=args.tokens)
    print(f"torch threads {torch.get_num_threads()}; {min(args.tokens, len(val)):,} tokens; SAE {sae_dir}")
    for name, basis in (("features", sae_basis(sae)), ("neurons", neuron_basis(model))):
        cpu, wall = time.process_time(), time.perf_counter()
        analysis = analyze_run(model, basis, val, cfg)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        stages = analysis.timings
        others = sum(t for stage, t in stages.items() if stage != "ablations")
        pairs = analysis.findings["ablation"]["n_firing_tokens"]
        print(
            f"{name}: analysis {wall:.1f} s wall ({cpu:.1f} s CPU); ablations {stages['ablations']:.1f} s "
            f"= {100 * stages['ablations'] / others:.1f}% of the other stages ({others:.1f} s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if k != "ablations")
            + f"); {pairs:,} ablated tokens"
        )


if __name__ == "__main__":
    main()
