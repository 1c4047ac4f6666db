"""Queries behind the study's views: a feature's matches, its family across sizes, and the
best-match histograms of universality (tables RunLink and FeatureMatch of trainer/store/schema.py).

A database from before these tables is served without them: every function here answers "no
matches" when the tables are missing (the read-only app never migrates).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import links
from app.family_models import (
    FAMILY_THRESHOLD,
    BestMatchHistogram,
    FamilyNode,
    FamilyTree,
    FeatureMatches,
    LinkedRun,
    MatchGroup,
    MatchOut,
    MatchSummary,
    UniversalityView,
)
from app.queries.runs import NotFoundError, feature_labels, get_run, table_names
from trainer.store.schema import Feature, FeatureMatch, Run, RunLink, Token

MAX_CHILDREN = 6  # per node of a family tree
MAX_PER_LEVEL = 24


def has_match_tables(session: Session) -> bool:
    """Whether the database has the match tables (on the session's own connection: a second
    connection per request would halve what the pool serves)."""
    return RunLink.__tablename__ in table_names(session)


def linked_run(run: Run) -> LinkedRun:
    return LinkedRun(
        slug=run.slug,
        kind=run.kind,
        model_name=run.model_name,
        n_features=run.n_features,
        url=links.run_url(run.slug),
    )


def _links(session: Session, run: Run) -> list[tuple[RunLink, Run]]:
    """This run's links to complete runs, with the other run (smallest dictionary first)."""
    if not has_match_tables(session):
        return []
    rows = session.execute(
        select(RunLink, Run)
        .join(Run, Run.id == RunLink.other_run_id)
        .where(RunLink.run_id == run.id, Run.status == "complete")
        .order_by(Run.n_features, Run.slug)
    ).all()
    return [(link, other) for link, other in rows]


def _match_rows(session: Session, link_id: int, index: int) -> list[FeatureMatch]:
    return list(
        session.scalars(
            select(FeatureMatch)
            .where(FeatureMatch.link_id == link_id, FeatureMatch.feature_index == index)
            .order_by(FeatureMatch.rank)
        )
    )


def feature_matches(session: Session, run: Run, index: int) -> FeatureMatches | None:
    """The feature's best matches in every linked run, or None if the run has no links."""
    # The yardstick (another SAE seed on the same model) is a study-level control, not a page link.
    run_links = [(link, other) for link, other in _links(session, run) if link.relation != "sae-seeds"]
    if not run_links:
        return None
    groups: dict[str, list[MatchGroup]] = {"sizes": [], "seeds": []}
    for link, other in run_links:
        rows = _match_rows(session, link.id, index)
        labels = feature_labels(session, other.id, [row.other_index for row in rows])
        matches = [
            MatchOut(
                index=row.other_index,
                label=labels.get(row.other_index, ""),
                url=links.feature_url(other.slug, row.other_index),
                activation_correlation=row.activation_correlation,
                decoder_cosine=row.decoder_cosine,
                logit_correlation=row.logit_correlation,
            )
            for row in rows
        ]
        relation: Literal["sizes", "seeds"] = "sizes" if link.relation == "sizes" else "seeds"
        groups[relation].append(
            MatchGroup(relation=relation, run=linked_run(other), n_tokens=link.n_tokens, matches=matches)
        )
    return FeatureMatches(
        sizes=groups["sizes"],
        seeds=groups["seeds"],
        family_url=links.family_url(run.slug, index) if groups["sizes"] else None,
        universality_url=links.universality_url(run.slug) if groups["seeds"] else None,
    )


# ---------------------------------------------------------------------------- family tree


def _best(session: Session, link_id: int, index: int) -> FeatureMatch | None:
    return session.scalars(
        select(FeatureMatch).where(
            FeatureMatch.link_id == link_id, FeatureMatch.feature_index == index, FeatureMatch.rank == 0
        )
    ).one_or_none()


def _children(session: Session, link_id: int, parent_index: int, threshold: float) -> list[FeatureMatch]:
    """Features of the larger run (link: larger → smaller) whose best match is `parent_index`."""
    return list(
        session.scalars(
            select(FeatureMatch)
            .where(
                FeatureMatch.link_id == link_id,
                FeatureMatch.other_index == parent_index,
                FeatureMatch.rank == 0,
                FeatureMatch.activation_correlation >= threshold,
            )
            .order_by(FeatureMatch.activation_correlation.desc())
            .limit(MAX_CHILDREN)
        )
    )


def family_tree(session: Session, run: Run, index: int, threshold: float = FAMILY_THRESHOLD) -> FamilyTree:
    """The feature's family across dictionary sizes: from its ancestor in the smallest dictionary
    (following best matches down in size) to every descendant whose best match in the next
    smaller dictionary is its parent with activation correlation ≥ threshold."""
    _check_feature(session, run, index)
    url = links.family_url(run.slug, index)
    sizes = [other for link, other in _links(session, run) if link.relation == "sizes"]
    levels = sorted([run, *sizes], key=lambda r: (r.n_features, r.slug))
    if len(levels) == 1:
        return FamilyTree(
            run=linked_run(run),
            index=index,
            threshold=threshold,
            levels=[linked_run(run)],
            nodes=[],
            url=url,
            message=f"Run {run.slug!r} is not linked to dictionaries of other sizes "
            "(train several with --d-sae 512,1024,... and analyse them).",
        )
    link_ids = {
        (link.run_id, link.other_run_id): link.id
        for link in session.scalars(
            select(RunLink).where(
                RunLink.run_id.in_([r.id for r in levels]), RunLink.other_run_id.in_([r.id for r in levels])
            )
        )
    }
    position = levels.index(run)
    # Up: the feature's ancestor in each smaller dictionary, one size at a time.
    path = {position: index}
    current = index
    for level in range(position - 1, -1, -1):
        link_id = link_ids.get((levels[level + 1].id, levels[level].id))
        best = _best(session, link_id, current) if link_id else None
        if best is None:
            break
        current = best.other_index
        path[level] = current
    top = min(path)
    nodes = [_node(0, None, top, levels, path[top], None, True)]
    frontier = [(0, path[top])]  # (node id, feature index) at the current level
    for level in range(top + 1, len(levels)):
        link_id = link_ids.get((levels[level].id, levels[level - 1].id))
        next_frontier: list[tuple[int, int]] = []
        for node_id, feature_index in frontier:
            children = _children(session, link_id, feature_index, threshold) if link_id else []
            kept = {row.feature_index: row.activation_correlation for row in children}
            on_path_parent = path.get(level - 1) == feature_index
            if on_path_parent and level in path and path[level] not in kept:  # keep the path visible
                best = _best(session, link_id, path[level]) if link_id else None
                kept[path[level]] = best.activation_correlation if best else None  # type: ignore[assignment]
            for child_index, correlation in kept.items():
                if len(next_frontier) >= MAX_PER_LEVEL:
                    break
                new_id = len(nodes)
                on_path = on_path_parent and path.get(level) == child_index
                nodes.append(_node(new_id, node_id, level, levels, child_index, correlation, on_path))
                next_frontier.append((new_id, child_index))
        frontier = next_frontier
        if not frontier:
            break
    _label_nodes(session, levels, nodes)
    return FamilyTree(
        run=linked_run(run),
        index=index,
        threshold=threshold,
        levels=[linked_run(r) for r in levels],
        nodes=nodes,
        url=url,
    )


def _node(
    node_id: int,
    parent: int | None,
    level: int,
    levels: list[Run],
    index: int,
    correlation: float | None,
    on_path: bool,
) -> FamilyNode:
    slug = levels[level].slug
    return FamilyNode(
        id=node_id,
        parent=parent,
        level=level,
        run=slug,
        index=index,
        label="",
        url=links.feature_url(slug, index),
        correlation=correlation,
        on_path=on_path,
    )


def _label_nodes(session: Session, levels: list[Run], nodes: list[FamilyNode]) -> None:
    wanted: dict[int, list[int]] = defaultdict(list)
    for node in nodes:
        wanted[node.level].append(node.index)
    for level, indices in wanted.items():
        labels = feature_labels(session, levels[level].id, indices)
        for node in nodes:
            if node.level == level:
                node.label = labels.get(node.index, "")


def _check_feature(session: Session, run: Run, index: int) -> None:
    found = session.scalar(select(Feature.index).where(Feature.run_id == run.id, Feature.index == index))
    if found is None:
        unit = "neuron" if run.kind == "neurons" else "feature"
        raise NotFoundError(f"Run {run.slug!r} has no {unit} {index} (it has {run.n_features}).")


# ---------------------------------------------------------------------------- universality


def _histogram(link: RunLink, run: Run, other: Run) -> BestMatchHistogram:
    data: dict[str, Any] = link.best_match_histogram or {}
    return BestMatchHistogram(
        run=linked_run(run),
        other=linked_run(other),
        n_tokens=link.n_tokens,
        n=int(data.get("n", 0)),
        median=data.get("median"),
        mean=data.get("mean"),
        edges=[float(e) for e in data.get("edges", [])],
        counts=[int(c) for c in data.get("counts", [])],
        summary=MatchSummary.model_validate(data["summary"]) if data.get("summary") else None,
    )


def _vocabulary(session: Session, run_id: int) -> list[bytes]:
    return list(session.scalars(select(Token.raw).where(Token.run_id == run_id).order_by(Token.token_id)))


def mismatch(session: Session, run: Run, other: Run) -> str | None:
    """Why two runs can never be matched (different MLP width or tokenizer), or None."""
    if run.d_in != other.d_in:
        return (
            f"Runs {run.slug!r} and {other.slug!r} read MLPs of different widths "
            f"({run.d_in} and {other.d_in}): their features cannot be matched."
        )
    if _vocabulary(session, run.id) != _vocabulary(session, other.id):
        return (
            f"Runs {run.slug!r} and {other.slug!r} use different tokenizers: their activations are "
            "not over the same tokens, so their features cannot be matched."
        )
    return None


def universality(session: Session, run: Run, other_slug: str | None = None) -> UniversalityView:
    """Best-match correlations of this model's features and neurons in the models they are
    linked to by seed (optionally only the model of run `other_slug`)."""
    url = links.universality_url(run.slug, other=other_slug)
    message = None
    other_run = None
    if other_slug:
        other_run = get_run(session, other_slug)
        message = mismatch(session, run, other_run)
        if message is None and other_run.model_name == run.model_name:
            message = (
                f"Runs {run.slug!r} and {other_slug!r} belong to one model; universality compares "
                "models trained from different seeds (dictionary sizes of one model are compared "
                "on each feature's family page)."
            )
    same_model = list(
        session.scalars(select(Run).where(Run.model_name == run.model_name, Run.status == "complete"))
    )
    features: list[BestMatchHistogram] = []
    neurons: list[BestMatchHistogram] = []
    yardstick: list[BestMatchHistogram] = []
    if message is None and has_match_tables(session):
        for mine in same_model:
            for link, other in _links(session, mine):
                if link.relation == "sae-seeds" and other_run is None:
                    yardstick.append(_histogram(link, mine, other))
                if link.relation != "seeds":
                    continue
                if other_run is not None and other.model_name != other_run.model_name:
                    continue
                (neurons if mine.kind == "neurons" else features).append(_histogram(link, mine, other))
    if message is None and not features and not neurons:
        message = (
            f"Run {run.slug!r} is not matched with {other_slug!r} yet: run "
            f"`monosemantic match --run {run.slug} --run {other_slug}`."
            if other_slug
            else f"The model of run {run.slug!r} is not matched with a model trained from another seed "
            "(train one with --seed-b)."
        )
    return UniversalityView(
        run=linked_run(run), features=features, neurons=neurons, yardstick=yardstick, message=message, url=url
    )
