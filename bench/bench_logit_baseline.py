"""The logit score and its measured chance level for one basis, from artifacts (no database): the
units' median logit score on the scoring split of the analysed held-out tokens, the same through
re-initialised models (each seed's median and their mean) and with random unit directions
(trainer.analysis.interpretability.logit_baselines, as `analyze` stores it).

    .venv/bin/python bench/bench_logit_baseline.py --run runs/study --sae runs/study/sae_topk_4096
    .venv/bin/python bench/bench_logit_baseline.py --run runs/study --sae neurons --seeds 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from trainer.analysis.interpretability import (
    logit_baselines,
    logit_scores,
    randomised_logit_weights,
    split_pass,
    split_stream,
)
from trainer.analysis.stream import encode_stream
from trainer.corpus.tokenizer import load_token_split
from trainer.lm.model import OneLayerTransformer
from trainer.sae import SparseAutoencoder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="a run folder with lm/ and tokens/")
    parser.add_argument("--sae", required=True, help="an SAE folder, or 'neurons'")
    parser.add_argument("--n-tokens", type=int, default=1_000_000)
    parser.add_argument("--seeds", type=int, default=5, help="re-initialised models")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    model = OneLayerTransformer.load(args.run / "lm").eval()
    n_ctx, vocab = model.cfg.n_ctx, model.cfg.vocab_size
    if args.sae == "neurons":
        decoder, encode = torch.eye(model.cfg.d_mlp), lambda x: x
    else:
        sae = SparseAutoencoder.load(Path(args.sae)).eval()
        decoder, encode = sae.W_dec.detach().float(), sae.encode
    val = load_token_split(args.run / "tokens", "val")
    tokens = val[: min(args.n_tokens, len(val)) // n_ctx * n_ctx]
    split = split_stream(tokens, n_ctx, vocab)
    with torch.no_grad():  # one streamed pass: nothing of the stream is kept
        batches = (batch for batch, _, _ in encode_stream(model, encode, tokens, n_ctx, 16_384, "fp32"))
        stats = split_pass(batches, split, decoder.shape[0], 1)
    logit_weights = model.direct_logit_weights().detach().float()
    scores, _ = logit_scores(stats.next_sum, decoder, logit_weights, args.k)
    random_weights = [
        w for seed in range(args.seeds) if (w := randomised_logit_weights(model, seed)) is not None
    ]
    finite = scores[~scores.isnan()]
    print(
        json.dumps(
            {
                "basis": args.sae,
                "median_logit_score": float(finite.median()),
                **logit_baselines(stats.next_sum, decoder, logit_weights, random_weights, args.k),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
