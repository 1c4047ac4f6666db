"""Feature splitting at run level: for each pair of consecutive dictionary sizes of one model, how
many features of the smaller have children in the larger (features whose best match in the
smaller is them, with activation correlation at or above the paper's ~0.4 link threshold), how
many split into several, and the largest families; and the map of every size together
(tables RunLink, FeatureMatch, SizeMap of trainer/store/schema.py).

A database from before these tables is served without them (the read-only app never migrates).
"""

from __future__ import annotations

import itertools

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import links
from app.family_models import FAMILY_THRESHOLD, LinkedRun
from app.queries.families import has_match_tables, linked_run
from app.queries.runs import feature_labels, table_names
from trainer.store.schema import Feature, FeatureMatch, Run, RunLink, SizeMap, SizeMapPoint, linked_sizes

N_FAMILIES = 5  # largest families listed per pair of sizes


class FamilyRef(BaseModel):
    index: int
    label: str
    n_children: int
    url: str = Field(description="The family tree of this feature of the smaller dictionary.")


class SplitPair(BaseModel):
    """A smaller dictionary against the next larger one of the same model."""

    small: LinkedRun
    large: LinkedRun
    n_tokens: int
    n_parents: int = Field(description="Features of the smaller with at least one child in the larger.")
    parent_share: float
    n_split: int = Field(description="Features of the smaller with two or more children.")
    n_linked: int = Field(
        description="Features of the larger whose best match in the smaller clears the threshold."
    )
    linked_share: float
    median_best_match: float | None = Field(description="Median best-match correlation, larger → smaller.")
    largest_families: list[FamilyRef]


class SizeMapPointOut(BaseModel):
    run: str
    n_features: int = Field(description="The size of the point's dictionary: the map's colour.")
    index: int
    x: float
    y: float
    label: str


class SplittingView(BaseModel):
    run: LinkedRun
    threshold: float
    levels: list[LinkedRun] = Field(
        description="The model's dictionaries linked to this run, smallest first."
    )
    pairs: list[SplitPair]
    size_map: list[SizeMapPointOut] = Field(
        default_factory=list,
        description="Every feature of the mapped sizes on one map (UMAP of all their decoder directions).",
    )
    message: str | None = Field(default=None, description="Why nothing is shown.")
    url: str


def size_levels(session: Session, run: Run) -> list[Run]:
    """The run and the complete dictionaries of its model it is linked to, smallest first."""
    if run.kind != "sae" or not has_match_tables(session):
        return [run]
    return linked_sizes(session, run)


def split_pair(
    session: Session, small: Run, large: Run, threshold: float = FAMILY_THRESHOLD
) -> SplitPair | None:
    """The children in `large` of each feature of `small`; None if the two are not linked."""
    link = session.scalars(
        select(RunLink).where(RunLink.run_id == large.id, RunLink.other_run_id == small.id)
    ).first()
    if link is None:
        return None
    children = session.execute(
        select(FeatureMatch.other_index, func.count())
        .where(
            FeatureMatch.link_id == link.id,
            FeatureMatch.rank == 0,
            FeatureMatch.activation_correlation >= threshold,
        )
        .group_by(FeatureMatch.other_index)
    ).all()
    counts = {int(index): int(n) for index, n in children}
    largest = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:N_FAMILIES]
    labels = feature_labels(session, small.id, [index for index, _ in largest])
    median = (link.best_match_histogram or {}).get("median")
    return SplitPair(
        small=linked_run(small),
        large=linked_run(large),
        n_tokens=link.n_tokens,
        n_parents=len(counts),
        parent_share=len(counts) / small.n_features if small.n_features else 0.0,
        n_split=sum(n >= 2 for n in counts.values()),
        n_linked=sum(counts.values()),
        linked_share=sum(counts.values()) / large.n_features if large.n_features else 0.0,
        median_best_match=float(median) if isinstance(median, int | float) else None,
        largest_families=[
            FamilyRef(
                index=index,
                label=labels.get(index, ""),
                n_children=n,
                url=links.family_url(small.slug, index),
            )
            for index, n in largest
        ],
    )


def size_map_points(session: Session, run: Run) -> list[SizeMapPointOut]:
    """The newest map of several sizes holding this run's features: all its points, or []."""
    if SizeMap.__tablename__ not in table_names(session):
        return []
    map_id = session.scalar(
        select(SizeMapPoint.map_id)
        .where(SizeMapPoint.run_id == run.id)
        .order_by(SizeMapPoint.map_id.desc())
        .limit(1)
    )
    if map_id is None:
        return []
    rows = session.execute(
        select(
            Run.slug,
            Run.n_features,
            SizeMapPoint.feature_index,
            SizeMapPoint.map_x,
            SizeMapPoint.map_y,
            Feature.label,
        )
        .join(Run, Run.id == SizeMapPoint.run_id)
        .outerjoin(
            Feature, (Feature.run_id == SizeMapPoint.run_id) & (Feature.index == SizeMapPoint.feature_index)
        )
        .where(SizeMapPoint.map_id == map_id, Run.status == "complete")
        .order_by(Run.n_features, Run.slug, SizeMapPoint.feature_index)
    ).all()
    return [
        SizeMapPointOut(run=slug, n_features=n, index=index, x=round(x, 4), y=round(y, 4), label=label or "")
        for slug, n, index, x, y, label in rows
    ]


def splitting_view(
    session: Session, run: Run, threshold: float = FAMILY_THRESHOLD, with_map: bool = True
) -> SplittingView:
    """Every pair of consecutive sizes among the run's linked dictionaries (and their map)."""
    levels = size_levels(session, run)
    pairs = [
        p
        for small, large in itertools.pairwise(levels)
        if (p := split_pair(session, small, large, threshold))
    ]
    message = None
    if run.kind != "sae":
        message = f"Run {run.slug!r} holds neurons: feature splitting compares dictionaries of several sizes."
    elif not has_match_tables(session):
        message = "This database predates feature matching."
    elif not pairs:
        message = f"Run {run.slug!r} is not linked to dictionaries of other sizes."
    return SplittingView(
        run=linked_run(run),
        threshold=threshold,
        levels=[linked_run(r) for r in levels],
        pairs=pairs,
        size_map=size_map_points(session, run) if with_map and run.kind == "sae" else [],
        message=message,
        url=links.splitting_url(run.slug),
    )
