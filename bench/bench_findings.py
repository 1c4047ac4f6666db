"""What the findings passes add to `analyze`, in CPU seconds, relative to the feature-statistics
pass measured in the same run: interpretability, ablation effects, matching two dictionaries
(trainer/analysis/match_runs.py: one stream, all-pairs correlations) and the map of both sizes together
(trainer/analysis/size_map.py).

The reference is passes 1-2 of trainer.analysis.analyze.analyze_run ("encode" and "histograms": density,
maximum, mean, top-k, token tables, histograms, interval samples), the statistics every feature
page had before these passes. CPU seconds (time.process_time: every thread of this process), so
other load on the machine does not inflate them.

Without arguments: a random model of the demo's shape and a random SAE firing ~2% of the time
(bench_analysis.py's); with --run, a trained run's model and SAEs:

    python bench/bench_findings.py [--tokens 200000] [--features 4096]
    python bench/bench_findings.py --run runs/demo [--sae runs/demo/sae_topk_4096] [--sae-b ...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_analysis import build

from trainer.analysis.analyze import analyze_run, sae_basis
from trainer.analysis.feature_map import feature_map
from trainer.analysis.match_runs import Side, stream_activations
from trainer.analysis.matching import PairMatcher
from trainer.config import AnalysisConfig
from trainer.corpus.tokenizer import load_token_split
from trainer.lm.model import OneLayerTransformer
from trainer.sae import SparseAutoencoder

REFERENCE = ("encode", "histograms")


def side(name: str, model: OneLayerTransformer, sae: SparseAutoencoder) -> Side:
    decoder = sae.W_dec.detach().float()
    logits = decoder @ model.direct_logit_weights().detach().float()
    return Side(0, name, "sae", "model", model, sae.encode, decoder, logits)


def cpu_seconds(function: Callable[[], object]) -> float:
    start = time.process_time()
    function()
    return time.process_time() - start


def load(
    args: argparse.Namespace,
) -> tuple[OneLayerTransformer, SparseAutoencoder, SparseAutoencoder, np.ndarray]:
    if args.run is None:
        model, sae = build(args.features, args.density)
        _, sae_b = build(args.features, args.density, seed=1)
        tokens = np.random.default_rng(0).integers(0, model.cfg.vocab_size, args.tokens).astype(np.uint16)
        return model, sae, sae_b, tokens
    folders = sorted(args.run.glob("sae_*"))
    sae_dir = args.sae or folders[0]
    # Matching cost depends on the sizes, not on which SAE: another of the run's, else the same.
    sae_b_dir = args.sae_b or next((f for f in folders if f != sae_dir), sae_dir)
    model = OneLayerTransformer.load(args.run / "lm").eval()
    tokens = load_token_split(args.run / "tokens", "val")[: args.tokens]
    return model, SparseAutoencoder.load(sae_dir).eval(), SparseAutoencoder.load(sae_b_dir).eval(), tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, help="a run directory (lm/, tokens/, sae_*/); default: random")
    parser.add_argument("--sae", type=Path, help="the SAE analysed (default: the run's first sae_*)")
    parser.add_argument("--sae-b", type=Path, help="the SAE matched with it (default: another sae_*)")
    parser.add_argument("--tokens", type=int, default=200_000, help="held-out tokens analysed and matched")
    parser.add_argument("--features", type=int, default=4096, help="random SAEs' size")
    parser.add_argument("--density", type=float, default=0.02, help="random SAEs' firing rate")
    args = parser.parse_args()
    model, sae, sae_b, tokens = load(args)
    cfg = AnalysisConfig(n_tokens=args.tokens)
    n_tokens = min(args.tokens, len(tokens)) // model.cfg.n_ctx * model.cfg.n_ctx
    print(
        f"torch threads {torch.get_num_threads()}; {n_tokens:,} tokens; SAEs of {sae.cfg.d_sae} and "
        f"{sae_b.cfg.d_sae} features; {'random' if args.run is None else args.run}"
    )

    analysis = analyze_run(model, sae_basis(sae), tokens, cfg)
    stages = analysis.cpu_timings
    reference = sum(stages[s] for s in REFERENCE)

    def match() -> object:
        a, b = side("a", model, sae), side("b", model, sae_b)
        matcher = PairMatcher(a.n_features, b.n_features, None, 32)
        for acts_a, acts_b in stream_activations(
            [a, b], tokens[:n_tokens], model.cfg.n_ctx, cfg.tokens_per_batch, cfg.dtype
        ):
            matcher.add(acts_a, acts_b)
        return matcher.result(3)

    match_cpu = cpu_seconds(match)
    directions = torch.cat([sae.W_dec.detach().float(), sae_b.W_dec.detach().float()])
    map_cpu = cpu_seconds(lambda: feature_map(directions))  # UMAP compiled by analyze_run's map

    print(f"reference: feature statistics ({' + '.join(REFERENCE)}) {reference:.1f} CPU s")
    rows = [
        ("interpretability", stages.get("interpretability", 0.0)),
        ("ablation effects", stages.get("ablations", 0.0)),
        ("matching two dictionaries", match_cpu),
        ("map of both sizes together", map_cpu),
        ("(one run's map, first UMAP: compile included)", stages.get("map", 0.0)),
        ("(examples, pass 3, for scale)", stages.get("examples", 0.0)),
    ]
    for name, seconds in rows:
        print(f"  {name:<48} {seconds:7.1f} CPU s = {seconds / reference:5.2f}x the reference")


if __name__ == "__main__":
    main()
