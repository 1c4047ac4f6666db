"""Cross products of two SAEs' activations for the all-pairs correlation (trainer/analysis/matching.py):
the sparse product it uses on TopK-sparse activations against the dense matmul, same data, same run.

    python bench/bench_matching.py [--tokens 8192] [--features 4096] [--k 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from trainer.analysis.matching import _cross


def topk_activations(n_tokens: int, n_features: int, k: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(n_tokens, n_features, generator=generator)
    values, indices = scores.topk(k, dim=1)
    return torch.zeros(n_tokens, n_features).scatter_(1, indices, values)


def best_of(repeats: int, function: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    a = topk_activations(args.tokens, args.features, args.k, 0)
    b = topk_activations(args.tokens, args.features, args.k, 1)
    torch.testing.assert_close(_cross(a, b), a.T @ b, rtol=1e-4, atol=1e-3)
    dense = best_of(args.repeats, lambda: a.T @ b)
    sparse = best_of(args.repeats, lambda: _cross(a, b))
    print(
        f"{args.tokens} tokens x {args.features}^2 pairs, k {args.k}: dense matmul {dense:.3f}s, "
        f"sparse product {sparse:.3f}s, speed-up {dense / sparse:.1f}x (threads {torch.get_num_threads()})"
    )


if __name__ == "__main__":
    main()
