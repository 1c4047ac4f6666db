"""The feature map: every feature of a run placed in the plane by UMAP of its direction, as in
the paper's interactive map of A/1/4096, so that families of related features sit together.

A feature's direction is its decoder row for an SAE, and what it writes into the residual stream
(its W_out column) for a neuron: the vectors nearest neighbours are found from too. UMAP with the
cosine metric, seeded, so a run's map is reproducible.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

MIN_FEATURES = 8  # fewer points than this make no map worth drawing
N_NEIGHBOURS = 15  # UMAP's default: how local the layout is
MIN_DIST = 0.1


def feature_map(directions: torch.Tensor, seed: int = 0) -> np.ndarray | None:
    """[n_features, 2] coordinates of the directions [n_features, d] (None below MIN_FEATURES).
    Directions of zero norm (never trained) are placed with the rest at the map's centre."""
    n = int(directions.shape[0])
    if n < MIN_FEATURES:
        return None
    import umap  # numba-compiled: imported only when a map is made

    vectors = directions.detach().float().cpu().numpy()
    norms = np.linalg.norm(vectors, axis=1)
    live = norms > 0
    xy = np.zeros((n, 2), dtype=np.float32)
    if live.sum() >= MIN_FEATURES:
        reducer = umap.UMAP(
            n_neighbors=min(N_NEIGHBOURS, int(live.sum()) - 1),
            min_dist=MIN_DIST,
            metric="cosine",
            random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state": wanted
            xy[live] = reducer.fit_transform(vectors[live])
        xy[~live] = xy[live].mean(axis=0)
    return xy
