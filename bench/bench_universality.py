"""Universality's figures straight from artifacts, no database: the best-match medians of one basis
against another (overall, alive, by density floor, each with its bootstrap interval), for the sweep
of issue 21 (what moves the features' figure: SAE tokens, variant, size, LM tokens).

A side is a model folder (`lm/` inside a run folder) and an SAE folder, or `neurons`. Both sides
stream the same held-out tokens (the first side's run), in fp32, through the same code as
`monosemantic match` (trainer.analysis.matching); only the A → B direction is reported, like the
paper's figure.

    .venv/bin/python bench/bench_universality.py --tokens runs/study/tokens \
        --a runs/study runs/study/sae_topk_4096 --b runs/study runs/study/sae_topk_4096_seed1
    .venv/bin/python bench/bench_universality.py --tokens runs/study/tokens \
        --a runs/study neurons --b runs/study/study-b neurons
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from trainer.analysis.match_runs import Side, stream_activations
from trainer.analysis.matching import PairMatcher, cosine_table, match_summary
from trainer.corpus.tokenizer import load_token_split
from trainer.lm.model import OneLayerTransformer
from trainer.sae import SparseAutoencoder


def side(run: Path, basis: str, models: dict[str, OneLayerTransformer]) -> Side:
    key = str(run.resolve())
    if key not in models:
        models[key] = OneLayerTransformer.load(run / "lm").eval()
    model = models[key]
    direct = model.direct_logit_weights().detach().float()
    if basis == "neurons":
        eye = torch.eye(model.cfg.d_mlp)
        return Side(0, f"{run.name}-neurons", "neurons", key, model, lambda x: x, eye, direct)
    sae = SparseAutoencoder.load(Path(basis)).eval()
    decoder = sae.W_dec.detach().float()
    return Side(0, Path(basis).name, "sae", key, model, sae.encode, decoder, decoder @ direct)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=Path, required=True, help="a run's tokens/ folder (its val split)")
    parser.add_argument("--a", nargs=2, required=True, metavar=("RUN", "SAE|neurons"))
    parser.add_argument("--b", nargs=2, required=True, metavar=("RUN", "SAE|neurons"))
    parser.add_argument("--n-tokens", type=int, default=1_000_000, help="held-out tokens to correlate over")
    parser.add_argument("--tokens-per-batch", type=int, default=8192)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()

    started = time.perf_counter()
    models: dict[str, OneLayerTransformer] = {}
    a = side(Path(args.a[0]), args.a[1], models)
    b = side(Path(args.b[0]), args.b[1], models)
    n_ctx = min(a.model.cfg.n_ctx, b.model.cfg.n_ctx)
    val = load_token_split(args.tokens, "val")
    tokens = val[: min(args.n_tokens, len(val)) // n_ctx * n_ctx]
    similarity = None
    if a.n_features * b.n_features > 2**25:  # as match_runs: candidates by direction
        same_model = a.model_key == b.model_key
        similarity = (
            cosine_table(a.decoder, b.decoder)
            if same_model
            else cosine_table(
                a.logit_weights - a.logit_weights.mean(1, keepdim=True),
                b.logit_weights - b.logit_weights.mean(1, keepdim=True),
            )
        )
    matcher = PairMatcher(a.n_features, b.n_features, similarity)
    for chunk in stream_activations([a, b], tokens, n_ctx, args.tokens_per_batch, "fp32"):
        matcher.add(chunk[0], chunk[1])
    result = matcher.result(1)
    summary = {
        "a": args.a,
        "b": args.b,
        "n_tokens": result.n_tokens,
        **match_summary(result.a_to_b.best_correlation.numpy(), result.density_a),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
