"""One feature map over every dictionary size of a model (the paper's UMAP of several runs
together): the decoder directions of all the sizes placed by one UMAP (trainer/analysis/
feature_map.py, the single run's map), stored as a SizeMap with a SizeMapPoint per feature.

The runs mapped are those linked to the given run as 'sizes' (trainer/analysis/match_runs.py), plus itself.
UMAP's compile is paid once per process: in a study's `analyze` the single-run maps have paid it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from trainer.analysis.feature_map import feature_map
from trainer.store.schema import Run, SizeMap, SizeMapPoint, linked_sizes


@dataclass
class StoredSizeMap:
    map_id: int
    model_name: str
    slugs: list[str]  # smallest dictionary first
    n_points: int


def _decoder(run: Run) -> torch.Tensor:
    from trainer.sae import SparseAutoencoder

    if not run.sae_path:
        raise ValueError(f"run {run.slug!r} records no SAE folder: its decoder cannot be mapped")
    return SparseAutoencoder.load(Path(run.sae_path)).W_dec.detach().float()


def map_sizes(engine: Engine, slug: str, seed: int = 0) -> StoredSizeMap | None:
    """Map run `slug` and its linked sizes together and store the map (replacing any earlier map
    of those runs); None if the run is linked to no other size."""
    with Session(engine) as session:
        run = session.scalars(select(Run).where(Run.slug == slug)).one_or_none()
        if run is None:
            raise ValueError(f"no run {slug!r} in the database")
        runs = linked_sizes(session, run)
        session.expunge_all()
    if len(runs) < 2:
        return None
    decoders = [_decoder(r) for r in runs]
    xy = feature_map(torch.cat(decoders), seed)
    if xy is None:
        return None
    rows, start = [], 0
    for r, decoder in zip(runs, decoders, strict=True):
        for index in range(decoder.shape[0]):
            x, y = xy[start + index]
            rows.append({"run_id": r.id, "feature_index": index, "map_x": float(x), "map_y": float(y)})
        start += decoder.shape[0]
    run_ids = [r.id for r in runs]
    with engine.begin() as conn:
        old = select(SizeMapPoint.map_id).where(SizeMapPoint.run_id.in_(run_ids)).distinct()
        old_ids = list(conn.execute(old).scalars())
        conn.execute(delete(SizeMapPoint).where(SizeMapPoint.map_id.in_(old_ids)))
        conn.execute(delete(SizeMap).where(SizeMap.id.in_(old_ids)))
        map_id = conn.execute(
            insert(SizeMap)
            .values(model_name=runs[0].model_name, n_points=len(rows), seed=seed)
            .returning(SizeMap.id)
        ).scalar_one()
        for begin in range(0, len(rows), 5000):
            conn.execute(
                insert(SizeMapPoint), [{**row, "map_id": map_id} for row in rows[begin : begin + 5000]]
            )
    return StoredSizeMap(map_id, runs[0].model_name, [r.slug for r in runs], len(rows))
