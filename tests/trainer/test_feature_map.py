"""The feature map: related directions land together, zero directions don't break it, and
every analysed feature gets a place."""

from __future__ import annotations

import numpy as np
import torch

from trainer.analysis.feature_map import MIN_FEATURES, feature_map


def clustered_directions(n_clusters: int = 4, per_cluster: int = 30, d: int = 64) -> torch.Tensor:
    """Directions in tight cones around `n_clusters` random centres (unit norm, shuffled)."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(n_clusters, d, generator=generator)
    points = centres.repeat_interleave(per_cluster, 0) + 0.15 * torch.randn(
        n_clusters * per_cluster, d, generator=generator
    )
    return points / points.norm(dim=1, keepdim=True)


def test_directions_of_one_family_sit_together() -> None:
    directions = clustered_directions()
    xy = feature_map(directions, seed=0)
    assert xy is not None and xy.shape == (120, 2) and np.isfinite(xy).all()
    labels = np.repeat(np.arange(4), 30)
    centres = np.stack([xy[labels == k].mean(axis=0) for k in range(4)])
    within = max(np.linalg.norm(xy[labels == k] - centres[k], axis=1).mean() for k in range(4))
    between = min(np.linalg.norm(centres[a] - centres[b]) for a in range(4) for b in range(a + 1, 4))
    assert between > 3 * within, (between, within)


def test_seeded_and_robust_to_dead_directions() -> None:
    directions = clustered_directions(n_clusters=2, per_cluster=10)
    directions[3] = 0.0  # a never-trained feature
    first, second = feature_map(directions, seed=1), feature_map(directions, seed=1)
    assert first is not None and second is not None
    assert np.array_equal(first, second) and np.isfinite(first).all()
    assert feature_map(torch.randn(MIN_FEATURES - 1, 8)) is None
