"""Automatic interpretability in the app: a unit's explanation and scores (feature pages), and a
run's features against its model's neurons (the comparison the paper draws), with the chart.

For the findings page: `interpretability_comparison(session, run)` returns the data and
`comparison_charts(data)` the Plotly specs; `templates/_partials/_interpretability.html` draws
both (`{% from "_partials/_interpretability.html" import interpretability_panel %}`).
A database from before the interpretations table is served without these panels.
"""

from __future__ import annotations

import statistics
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import links
from app.models import InterpretationOut
from app.queries.runs import table_names
from trainer.store.schema import Interpretation, Run, RunFinding

# The paper's figures (PAPER.md): automatic interpretability on the logit side, and the human
# rubric (0-14) on activations.
PAPER = {
    "logit_autointerp_features": 0.74,
    "logit_autointerp_neurons": 0.53,
    "logit_autointerp_random_model": 0.5,
    "human_rubric_features": 12.0,
    "human_rubric_neurons": 0.0,
}

METHOD = (
    "Automatic: each explanation lists the tokens and (previous token, token) contexts that predict "
    "the unit's activation on half of the analysed held-out contexts; a simulator plays it on the "
    "other half, never seen, and the score is the correlation between simulated and actual "
    "activations. The headline is 'top + random' (Bills et al.): the unit's top scoring windows with an "
    "equal weight of random scoring text; the other score uses every scoring token. Logit score: over "
    "the scoring tokens where the unit fires, weighted by activation, the mean percentile of the actual "
    "next token among the unit's direct logit effects; its chance level is measured, with the same "
    "units' logit effects through a re-initialised model (and with random unit directions). Brackets: "
    "95% bootstrap intervals of the medians over units."
)


class ScoreGroup(BaseModel):
    """One run's units under one explainer: their scores and medians."""

    slug: str
    kind: str
    unit: str  # 'features' | 'neurons'
    explainer: str
    url: str
    n_units: int
    n_scored: int
    median_score: float | None
    median_score_top_random: float | None
    median_logit_score: float | None
    median_logit_top_fraction: float | None
    scores: list[float] = Field(description="Every defined score, by unit index.")
    top_random_scores: list[float] = Field(default_factory=list, description="The headline score, per unit.")
    logit_scores: list[float]
    ci: dict[str, list[float] | None] = Field(
        default_factory=dict,
        description="95% bootstrap interval of each median over units: score_top_random, score, logit_score.",
    )
    baseline_logit_score: float | None = Field(
        default=None, description="The logit score's chance level, measured on randomised models."
    )
    baseline_logit_scores: dict[str, Any] = Field(
        default_factory=dict,
        description="Each measured baseline: random_model (mean over re-initialisations), "
        "random_model_medians (each), random_directions.",
    )


class InterpretabilityComparison(BaseModel):
    run: str
    available: bool
    message: str = Field(description="What this run lacks, if anything.")
    groups: list[ScoreGroup]
    paper: dict[str, float]
    method: str
    url: str


def has_interpretations(session: Session) -> bool:
    """Whether the database has the interpretations table (a read-only app never migrates)."""
    return Interpretation.__tablename__ in table_names(session)


def feature_interpretations(session: Session, run: Run, index: int) -> list[InterpretationOut]:
    """A unit's explanations (local first), empty for a run or database without them."""
    if not has_interpretations(session):
        return []
    rows = session.scalars(
        select(Interpretation)
        .where(Interpretation.run_id == run.id, Interpretation.feature_index == index)
        .order_by(Interpretation.explainer.desc())  # 'local' before 'llm'
    ).all()
    return [
        InterpretationOut(
            explainer=row.explainer,
            explanation=row.explanation,
            rules=row.rules or {},
            score=row.score,
            score_top_random=row.score_top_random,
            logit_score=row.logit_score,
            logit_top_fraction=row.logit_top_fraction,
        )
        for row in rows
    ]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _stored_summary(session: Session, run: Run) -> dict[str, Any]:
    """What `analyze` stored beside the scores (RunFinding 'interpretability'): the medians'
    bootstrap intervals and the measured logit baseline; {} for a run analysed before them."""
    if RunFinding.__tablename__ not in table_names(session):
        return {}
    data = session.scalars(
        select(RunFinding.data).where(RunFinding.run_id == run.id, RunFinding.key == "interpretability")
    ).one_or_none()
    return data or {}


def _groups(session: Session, run: Run) -> list[ScoreGroup]:
    rows = session.execute(
        select(
            Interpretation.explainer,
            Interpretation.score,
            Interpretation.score_top_random,
            Interpretation.logit_score,
            Interpretation.logit_top_fraction,
        )
        .where(Interpretation.run_id == run.id)
        .order_by(Interpretation.explainer.desc(), Interpretation.feature_index)
    ).all()
    by_explainer: dict[str, list[Any]] = {}
    for row in rows:
        by_explainer.setdefault(row[0], []).append(row)
    summary = _stored_summary(session, run)
    groups = []
    for explainer, entries in by_explainer.items():
        columns = [[float(r[i]) for r in entries if r[i] is not None] for i in range(1, 5)]
        stored = summary if explainer == summary.get("explainer", "local") else summary.get(explainer) or {}
        groups.append(
            ScoreGroup(
                slug=run.slug,
                kind=run.kind,
                unit="neurons" if run.kind == "neurons" else "features",
                explainer=explainer,
                url=links.run_url(run.slug),
                n_units=len(entries),
                n_scored=len(columns[0]),
                median_score=_median(columns[0]),
                median_score_top_random=_median(columns[1]),
                median_logit_score=_median(columns[2]),
                median_logit_top_fraction=_median(columns[3]),
                scores=[round(v, 4) for v in columns[0]],
                top_random_scores=[round(v, 4) for v in columns[1]],
                logit_scores=[round(v, 4) for v in columns[2]],
                ci=stored.get("ci") or {},
                baseline_logit_score=summary.get("baseline_logit_score"),
                baseline_logit_scores=summary.get("baseline_logit_scores") or {},
            )
        )
    return groups


def sibling_run(session: Session, run: Run) -> Run | None:
    """The newest complete run of the same model with the other kind (its neurons, or an SAE)."""
    other = "sae" if run.kind == "neurons" else "neurons"
    return session.scalars(
        select(Run)
        .where(
            Run.model_name == run.model_name, Run.kind == other, Run.status == "complete", Run.id != run.id
        )
        .order_by(Run.created_at.desc(), Run.id.desc())
        .limit(1)
    ).first()


def interpretability_comparison(session: Session, run: Run) -> InterpretabilityComparison:
    """The run's units against its model's other basis (features vs neurons), per explainer."""
    url = links.interpretability_url(run.slug)
    if not has_interpretations(session):
        return InterpretabilityComparison(
            run=run.slug,
            available=False,
            message="This database predates interpretability scores: re-run `monosemantic analyze`.",
            groups=[],
            paper=PAPER,
            method=METHOD,
            url=url,
        )
    sibling = sibling_run(session, run)
    runs = [run] + ([sibling] if sibling is not None else [])
    groups = [group for r in runs for group in _groups(session, r)]
    groups.sort(key=lambda g: (g.explainer != "local", g.unit != "features"))
    missing = []
    if not any(g.slug == run.slug for g in groups):
        missing.append("this run has no interpretability scores (analysed before they existed)")
    if sibling is None:
        other = "an SAE" if run.kind == "neurons" else "its neurons"
        missing.append(f"no complete run of {other} for model {run.model_name!r} to compare with")
    elif not any(g.slug == sibling.slug for g in groups):
        missing.append(f"run {sibling.slug!r} has no interpretability scores")
    return InterpretabilityComparison(
        run=run.slug,
        available=bool(groups),
        message="; ".join(missing),
        groups=groups,
        paper=PAPER,
        method=METHOD,
        url=url,
    )


# ----------------------------------------------------------------------------- charts

COLOURS = {"features": "#d35400", "neurons": "#2471a3"}


def comparison_charts(data: InterpretabilityComparison) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, caption, Plotly spec): box plots of the simulation scores and of the logit scores,
    features against neurons, each box named with its median."""
    charts = []
    baseline = next((g.baseline_logit_score for g in data.groups if g.baseline_logit_score is not None), None)
    logit_title = (
        "logit score (0.5 = chance)"
        if baseline is None
        else f"logit score (dotted: measured chance, {baseline:.3f})"
    )
    for key, field, title, reference in (
        ("top-random", "top_random_scores", "top-and-random simulation score (the headline)", None),
        ("score", "scores", "simulation score, every scoring token (correlation)", None),
        ("logit", "logit_scores", logit_title, 0.5 if baseline is None else baseline),
    ):
        traces = []
        for group in data.groups:
            values = getattr(group, field)
            if not values:
                continue
            median = statistics.median(values)
            name = f"{group.unit} ({group.explainer}), median {median:.2f}"
            traces.append(
                {
                    "type": "box",
                    "x": values,
                    "name": name,
                    "boxpoints": False,
                    "orientation": "h",
                    "marker": {"color": COLOURS.get(group.unit, "#8aa1b1")},
                    "hoverinfo": "x",
                }
            )
        if not traces:
            continue
        layout: dict[str, Any] = {
            "height": 110 + 50 * len(traces),
            "margin": {"l": 230, "r": 12, "t": 8, "b": 40},
            "xaxis": {"title": {"text": title}},
            "showlegend": False,
            "paper_bgcolor": "rgba(0,0,0,0)",
            "plot_bgcolor": "rgba(0,0,0,0)",
        }
        if reference is not None:
            layout["shapes"] = [
                {
                    "type": "line",
                    "x0": reference,
                    "x1": reference,
                    "yref": "paper",
                    "y0": 0,
                    "y1": 1,
                    "line": {"dash": "dot", "color": "#888"},
                }
            ]
        charts.append(
            (
                f"chart-interp-{key}",
                f"Distribution of the {title} per unit",
                {"data": traces, "layout": layout},
            )
        )
    return charts
