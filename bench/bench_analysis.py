"""Throughput of trainer.analysis.analyze.analyze_run against a straightforward reference, on random data.

A random model of the demo shape (A/1: d_mlp 512, n_ctx 128, vocab 4096) and a random SAE of
4096 features whose encoder biases are set so each feature fires on ~2% of tokens (L0 ~ 80,
like a trained SAE; a random SAE with zero biases fires on half the features, which is not a
workload anyone analyses). The reference materialises every activation in fp32 and loops over
features in NumPy (density, max, mean, histogram, top-k, interval samples, top tokens).

    python bench/bench_analysis.py [--tokens 200000] [--reference-tokens 16384]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trainer.analysis.analyze import analyze_run, sae_basis
from trainer.config import AnalysisConfig, ModelConfig, SAEConfig
from trainer.lm.model import OneLayerTransformer
from trainer.sae import SparseAutoencoder


def build(d_sae: int, density: float, seed: int = 0) -> tuple[OneLayerTransformer, SparseAutoencoder]:
    torch.manual_seed(seed)
    model = OneLayerTransformer(ModelConfig()).eval()
    sae = SparseAutoencoder(SAEConfig(d_in=512, d_sae=d_sae), seed=seed).eval()
    with torch.no_grad():
        ids = torch.randint(0, model.cfg.vocab_size, (32, model.cfg.n_ctx))
        acts = model.mlp_activations(ids).reshape(-1, model.cfg.d_mlp)
        pre = sae.pre_activations(acts)
        sae.b_enc.sub_(torch.quantile(pre, 1 - density, dim=0))
    return model, sae


@torch.no_grad()
def reference(
    model: OneLayerTransformer, sae: SparseAutoencoder, tokens: np.ndarray, cfg: AnalysisConfig
) -> None:
    """The naive way: every activation in memory, then one feature at a time."""
    n_ctx = model.cfg.n_ctx
    ids = torch.from_numpy(tokens.astype(np.int64)).view(-1, n_ctx)
    acts = torch.cat(
        [sae.encode(model.mlp_activations(chunk).reshape(-1, model.cfg.d_mlp)) for chunk in ids.split(64)]
    ).numpy()  # [N, D] fp32
    rng = np.random.default_rng(0)
    for feature in range(acts.shape[1]):
        column = acts[:, feature]
        firing = np.flatnonzero(column > 0)
        if firing.size == 0:
            continue
        values = column[firing]
        _density, maximum, _mean = firing.size / len(column), values.max(), values.mean()
        np.histogram(values, bins=cfg.histogram_bins, range=(0, maximum))
        _top = firing[np.argsort(-values, kind="stable")[: cfg.n_top_examples]]
        bands = np.minimum((values / maximum * cfg.n_intervals).astype(int), cfg.n_intervals - 1)
        for band in range(cfg.n_intervals):
            members = firing[bands == band]
            if members.size:
                rng.choice(members, min(cfg.examples_per_interval, members.size), replace=False)
        np.bincount(tokens[firing], minlength=model.cfg.vocab_size)
        np.bincount(tokens[firing], weights=values, minlength=model.cfg.vocab_size)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=200_000, help="tokens streamed through analyze_run")
    parser.add_argument(
        "--reference-tokens", type=int, default=16_384, help="tokens for the (slow) reference"
    )
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--density", type=float, default=0.02, help="target firing rate of each feature")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, sae = build(args.features, args.density)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.cfg.vocab_size, args.tokens).astype(np.uint16)
    cfg = AnalysisConfig(n_tokens=args.tokens)
    print(
        f"torch threads: {torch.get_num_threads()}; {args.features} features; target density {args.density}"
    )

    ticks: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        ticks.setdefault(stage, []).append(time.perf_counter())

    start = time.perf_counter()
    analysis = analyze_run(model, sae_basis(sae), tokens, cfg, progress=progress)
    elapsed = time.perf_counter() - start
    l0 = sum(f["density"] for f in analysis.features)
    ours = args.features * analysis.n_tokens / elapsed
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in analysis.timings.items())
    print(
        f"analyze_run  (bf16, streamed): {analysis.n_tokens:,} tokens in {elapsed:.1f}s ({stages}); "
        f"L0 {l0:.0f}; cache {analysis.cache_bytes / 1e6:.0f} MB"
    )
    print(f"  throughput {ours / 1e9:.2f} G feature-tokens/s")
    # Extrapolate from the steady state (the second half of each streamed stage: the first batches
    # fill the top-k and reservoir buffers and merge far more candidates) plus the fixed costs.
    batch_tokens = max(1, cfg.tokens_per_batch // model.cfg.n_ctx) * model.cfg.n_ctx
    n_batches_10m = 10_000_000 / batch_tokens
    per_batch = {
        stage: float(np.median(np.diff(t[len(t) // 2 :]))) for stage, t in ticks.items() if len(t) > 3
    }
    streamed = sum(per_batch.values()) * n_batches_10m
    fixed = analysis.timings.get("summaries", 0.0)
    stage_times = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in per_batch.items())
    print(f"  steady state per batch of {batch_tokens} tokens: {stage_times}")
    print(
        f"  extrapolated: {args.features} features x 10M tokens in {(streamed + fixed) / 60:.1f} min "
        f"(streamed passes {streamed / 60:.1f} min + summaries {fixed:.0f}s; examples/DB writing not scaled)"
    )

    n_ref = args.reference_tokens // model.cfg.n_ctx * model.cfg.n_ctx
    start = time.perf_counter()
    reference(model, sae, tokens[:n_ref], cfg)
    ref_elapsed = time.perf_counter() - start
    theirs = args.features * n_ref / ref_elapsed
    print(f"reference    (fp32, materialised, per-feature NumPy): {n_ref:,} tokens in {ref_elapsed:.1f}s")
    print(f"  throughput {theirs / 1e9:.3f} G feature-tokens/s")
    print(f"speed-up: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
