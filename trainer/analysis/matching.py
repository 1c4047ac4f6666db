"""Matching the features of two bases by how they fire on the same tokens.

Feature splitting (Bricken et al. 2023, "Feature Splitting") links each feature of one dictionary
to its closest features in dictionaries of other sizes trained on the same activations;
universality ("Universality") matches each feature of model A to its best counterpart in model B,
trained the same way from another seed. Both rank pairs by the Pearson correlation of their
activations over the same tokens.

Correlation for all pairs is streamed: over chunks of tokens we accumulate each feature's sum and
sum of squares and the cross products Σ a_i b_j. SAE activations are sparse, so the cross products
of a chunk come from a sparse × sparse product when that is cheaper than a dense matmul. For
dictionaries whose n_a × n_b table would not fit (`max_dense_pairs`), each feature of A keeps
only `n_candidates` candidates in B, chosen beforehand by a direction's cosine (decoder vectors in
one model; logit weights across models), and only those cross products are accumulated.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.analysis.bootstrap import N_BOOTSTRAP, bootstrap_median

MAX_DENSE_PAIRS = 2**25  # a float64 [n_a, n_b] table of 256 MB


def cosine_table(vectors_a: torch.Tensor, vectors_b: torch.Tensor) -> torch.Tensor:
    """[n_a, n_b] cosine similarity of the rows of two matrices (zero rows give 0)."""
    a = torch.nn.functional.normalize(vectors_a.float(), dim=1)
    b = torch.nn.functional.normalize(vectors_b.float(), dim=1)
    return a @ b.T


def row_correlation(rows_a: torch.Tensor, rows_b: torch.Tensor) -> torch.Tensor:
    """[n] Pearson correlation of rows_a[i] with rows_b[i] (e.g. two features' logit weights)."""
    a = rows_a.double() - rows_a.double().mean(dim=1, keepdim=True)
    b = rows_b.double() - rows_b.double().mean(dim=1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denominator > 0, (a * b).sum(dim=1) / denominator.clamp_min(1e-300), 0.0).float()


def top_candidates(similarity: torch.Tensor, n_candidates: int) -> torch.Tensor:
    """[n_a, k]: for each row, the columns of highest similarity (k = min(n_candidates, n_b))."""
    return similarity.topk(min(n_candidates, similarity.shape[1]), dim=1).indices


class CorrelationAccumulator:
    """Streams Σa, Σa², Σb, Σb² and Σ a_i b_j over token chunks; `correlation()` gives Pearson's r
    for every pair (dense) or for each row's candidates only (`candidates[n_a, k]`)."""

    def __init__(self, n_a: int, n_b: int, candidates: torch.Tensor | None = None) -> None:
        self.n_a, self.n_b, self.n_tokens = n_a, n_b, 0
        self.candidates = candidates
        self.sum_a = torch.zeros(n_a, dtype=torch.float64)
        self.sum_b = torch.zeros(n_b, dtype=torch.float64)
        self.sumsq_a = torch.zeros(n_a, dtype=torch.float64)
        self.sumsq_b = torch.zeros(n_b, dtype=torch.float64)
        self.fires_a = torch.zeros(n_a, dtype=torch.float64)  # tokens where each unit is nonzero
        self.fires_b = torch.zeros(n_b, dtype=torch.float64)
        shape = (n_a, n_b) if candidates is None else tuple(candidates.shape)
        self.cross = torch.zeros(shape, dtype=torch.float64)

    def add(self, acts_a: torch.Tensor, acts_b: torch.Tensor) -> None:
        """One chunk: acts_a[T, n_a] and acts_b[T, n_b] on the same T tokens."""
        a, b = acts_a.float(), acts_b.float()
        self.n_tokens += a.shape[0]
        self.sum_a += a.sum(0).double()
        self.sum_b += b.sum(0).double()
        self.sumsq_a += a.square().sum(0).double()
        self.sumsq_b += b.square().sum(0).double()
        self.fires_a += (a != 0).sum(0).double()
        self.fires_b += (b != 0).sum(0).double()
        if self.candidates is not None:
            self.cross += _candidate_cross(a, b, self.candidates).double()
        else:
            self.cross += _cross(a, b).double()

    def correlation(self) -> torch.Tensor:
        """[n_a, n_b] (or [n_a, k]) Pearson correlation; 0 where either side never varies."""
        n = max(self.n_tokens, 1)
        mean_a, mean_b = self.sum_a / n, self.sum_b / n
        std_a = (self.sumsq_a / n - mean_a.square()).clamp_min(0).sqrt()
        std_b = (self.sumsq_b / n - mean_b.square()).clamp_min(0).sqrt()
        if self.candidates is None:
            mean_bj, std_bj = mean_b[None, :], std_b[None, :]
        else:
            mean_bj, std_bj = mean_b[self.candidates], std_b[self.candidates]
        covariance = self.cross / n - mean_a[:, None] * mean_bj
        scale = std_a[:, None] * std_bj
        # A constant unit (dead, or firing everywhere alike) correlates with nothing.
        valid = scale > 1e-12 * (1 + mean_a[:, None].abs() * mean_bj.abs())
        r = torch.where(valid, covariance / scale.clamp_min(1e-300), 0.0)
        return r.clamp(-1, 1).float()


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[n_a, n_b] Σ_t a[t, i] b[t, j]: a sparse product when both are sparse enough to gain."""
    n_tokens = a.shape[0]
    nnz_a, nnz_b = int(torch.count_nonzero(a)), int(torch.count_nonzero(b))
    sparse_cost = nnz_a * (nnz_b / max(n_tokens, 1)) * 20  # scattered adds cost ~20 fused multiply-adds
    if sparse_cost >= n_tokens * a.shape[1] * b.shape[1] / 8:
        return a.T @ b
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used internally, results exact
        warnings.simplefilter("ignore", UserWarning)
        product = torch.sparse.mm(a.T.to_sparse_coo(), b.to_sparse_coo()).coalesce()
    out = torch.zeros(a.shape[1] * b.shape[1])
    i, j = product.indices()
    out.index_add_(0, i * b.shape[1] + j, product.values())
    return out.view(a.shape[1], b.shape[1])


def _candidate_cross(a: torch.Tensor, b: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[n_a, k] Σ_t a[t, i] b[t, candidates[i, m]], from a's nonzero entries only."""
    tokens, features = a.nonzero(as_tuple=True)
    values = a[tokens, features]
    gathered = b[tokens[:, None], candidates[features]]  # [nnz, k]
    out = torch.zeros(candidates.shape, dtype=torch.float32)
    out.index_add_(0, features, values[:, None] * gathered)
    return out


# ---------------------------------------------------------------------------- matches


@dataclass
class Matches:
    """For each feature of A, its `k` best features of B by activation correlation, best first."""

    indices: torch.Tensor  # [n_a, k] int64, features of B
    correlation: torch.Tensor  # [n_a, k] activation correlation

    @property
    def best_correlation(self) -> torch.Tensor:
        return self.correlation[:, 0]

    @property
    def best_index(self) -> torch.Tensor:
        return self.indices[:, 0]


def best_matches(correlation: torch.Tensor, k: int, candidates: torch.Tensor | None = None) -> Matches:
    """The `k` best columns of each row (mapped through `candidates` when the table holds only them)."""
    values, columns = correlation.topk(min(k, correlation.shape[1]), dim=1)
    indices = columns if candidates is None else candidates.gather(1, columns)
    return Matches(indices, values)


@dataclass
class PairResult:
    """Both directions of one matched pair of bases."""

    a_to_b: Matches
    b_to_a: Matches
    n_tokens: int
    density_a: torch.Tensor | None = None  # [n_a] share of the tokens where each unit fired
    density_b: torch.Tensor | None = None


class PairMatcher:
    """Accumulates one pair of bases over a stream and returns both directions' matches.

    Dense when n_a × n_b ≤ max_dense_pairs (one table serves both directions); otherwise each
    direction keeps `n_candidates` per feature, chosen by `similarity[n_a, n_b]` (a cosine)."""

    def __init__(
        self,
        n_a: int,
        n_b: int,
        similarity: torch.Tensor | None = None,
        n_candidates: int = 32,
        max_dense_pairs: int = MAX_DENSE_PAIRS,
    ) -> None:
        self.dense = n_a * n_b <= max_dense_pairs
        if self.dense:
            self.forward = CorrelationAccumulator(n_a, n_b)
            self.backward: CorrelationAccumulator | None = None
        else:
            if similarity is None:
                raise ValueError(
                    f"{n_a} × {n_b} feature pairs exceed max_dense_pairs ({max_dense_pairs}) and no "
                    "similarity was given to choose candidates"
                )
            self.forward = CorrelationAccumulator(n_a, n_b, top_candidates(similarity, n_candidates))
            self.backward = CorrelationAccumulator(n_b, n_a, top_candidates(similarity.T, n_candidates))

    def add(self, acts_a: torch.Tensor, acts_b: torch.Tensor) -> None:
        self.forward.add(acts_a, acts_b)
        if self.backward is not None:
            self.backward.add(acts_b, acts_a)

    def result(self, k: int) -> PairResult:
        table = self.forward.correlation()
        n = max(self.forward.n_tokens, 1)
        density_a, density_b = self.forward.fires_a / n, self.forward.fires_b / n
        if self.backward is None:
            return PairResult(
                best_matches(table, k), best_matches(table.T, k), self.forward.n_tokens, density_a, density_b
            )
        return PairResult(
            best_matches(table, k, self.forward.candidates),
            best_matches(self.backward.correlation(), k, self.backward.candidates),
            self.forward.n_tokens,
            density_a,
            density_b,
        )


def match_activations(
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_a: int,
    n_b: int,
    k: int = 3,
    similarity: torch.Tensor | None = None,
    n_candidates: int = 32,
    max_dense_pairs: int = MAX_DENSE_PAIRS,
) -> PairResult:
    """Match two bases from chunks of their activations (acts_a[T, n_a], acts_b[T, n_b])."""
    matcher = PairMatcher(n_a, n_b, similarity, n_candidates, max_dense_pairs)
    for acts_a, acts_b in chunks:
        matcher.add(acts_a, acts_b)
    return matcher.result(k)


def best_match_histogram(best: torch.Tensor, bins: int = 40) -> dict[str, object]:
    """{"edges", "counts", "median", "mean", "n"}: histogram of best-match correlations on [-1, 1]
    (the paper's universality figure; its medians: 0.72 for features, 0.46 for neurons)."""
    values = best.double()
    counts = torch.histc(values, bins=bins, min=-1.0, max=1.0) if values.numel() else torch.zeros(bins)
    edges = torch.linspace(-1, 1, bins + 1)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "counts": [int(c) for c in counts],
        "median": float(values.median()) if values.numel() else None,
        "mean": float(values.mean()) if values.numel() else None,
        "n": int(values.numel()),
    }


# ---------------------------------------------------------------------------- medians with intervals

DENSITY_FLOORS = (1e-5, 1e-4, 1e-3)  # the bins: features denser than each floor


def match_summary(
    best: np.ndarray | torch.Tensor,
    density: np.ndarray | torch.Tensor | None,
    floors: Sequence[float] = DENSITY_FLOORS,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """The best-match medians of one direction, each with a bootstrap interval: over all units
    ("overall", dead ones counted at their r of 0), over the alive ones (fired at least once on the
    matching tokens) and over those at least as dense as each floor ("by_density", keyed by the
    floor as text, e.g. "1e-05")."""
    best = np.asarray(best, dtype=np.float64)
    out: dict[str, Any] = {"overall": bootstrap_median(best, n_resamples, seed)}
    if density is None:
        return out
    density = np.asarray(density, dtype=np.float64)
    out["alive"] = bootstrap_median(best[density > 0], n_resamples, seed)
    out["by_density"] = {
        f"{floor:g}": bootstrap_median(best[density >= floor], n_resamples, seed) for floor in floors
    }
    return out
