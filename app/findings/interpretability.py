"""Claim: features are far more interpretable than neurons (the paper's experiment 1), by the
automatic interpretability scores `analyze` stores (app/queries/interpretability.py reads them)."""

from __future__ import annotations

from typing import Any

from app.findings import commands
from app.findings.context import FindingsContext, figure, not_computed
from app.models import Finding, FindingFigure, FindingLink
from app.queries.interpretability import PAPER, ScoreGroup, interpretability_comparison

KEY, TITLE = "interpretability", "Features are more interpretable than neurons"
CLAIM = (
    "An SAE's features are far more interpretable than the MLP's neurons: by human raters (rubric "
    "0-14, median 12 for features vs 0 for neurons) and by logit-based automatic interpretability "
    "(0.74 vs 0.53; 0.5 for a randomised model)."
)
# The headline is Bills et al.'s top-and-random score; brackets are 95% bootstrap intervals.


def _text(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _figures(features: ScoreGroup | None, neurons: ScoreGroup | None) -> list[FindingFigure]:
    paper_logit = {
        "features": (PAPER["logit_autointerp_features"], "0.74"),
        "neurons": (PAPER["logit_autointerp_neurons"], "0.53 (0.5: a random model)"),
    }
    figures = []
    # The headline (Bills et al.): top-activating plus random held-out windows, with its interval.
    for unit, group in (("features", features), ("neurons", neurons)):
        score = group.median_score_top_random if group else None
        figures.append(
            figure(
                f"median top-and-random simulation score, {unit}",
                None,
                "not stated (the paper's simulator was an LLM)",
                score,
                _text(score, group.ci.get("score_top_random")) if group else "no scores",
            )
        )
    for unit, group in (("features", features), ("neurons", neurons)):
        paper, paper_text = paper_logit[unit]
        logit = group.median_logit_score if group else None
        figures.append(
            figure(
                f"median logit score, {unit}",
                paper,
                paper_text,
                logit,
                _text(logit, group.ci.get("logit_score")) if group else "no scores",
            )
        )
    baseline = next(
        (g.baseline_logit_score for g in (features, neurons) if g and g.baseline_logit_score), None
    )
    figures.append(
        figure(
            "logit score's chance level (measured: randomised model)",
            PAPER["logit_autointerp_random_model"],
            "0.5 (a randomised model)",
            baseline,
            _text(baseline) if baseline is not None else "not measured (analysed before issue 21)",
        )
    )
    for unit, group in (("features", features), ("neurons", neurons)):
        score = group.median_score if group else None
        figures.append(
            figure(
                f"median simulation score, every scoring token, {unit}",
                None,
                "not stated (the paper's simulator was an LLM)",
                score,
                _text(score, group.ci.get("score")) if group else "no scores",
            )
        )
    for unit, paper in (
        ("features", PAPER["human_rubric_features"]),
        ("neurons", PAPER["human_rubric_neurons"]),
    ):
        figures.append(
            figure(
                f"human rubric (0-14) median, {unit}",
                paper,
                f"{paper:g}",
                None,
                "not measured (no human raters)",
            )
        )
    return figures


def _local(groups: list[ScoreGroup], unit: str) -> ScoreGroup | None:
    """The unit's group by the local explainer (every unit has it), else by the LLM."""
    mine = [g for g in groups if g.unit == unit]
    return next((g for g in mine if g.explainer == "local"), mine[0] if mine else None)


def claim(ctx: FindingsContext) -> Finding:
    run = ctx.feature_run or ctx.neuron_run or ctx.run
    how = f"Not computed for this run: run `{commands.analyze(run)}` to compute it."
    data = interpretability_comparison(ctx.session, run)
    features, neurons = _local(data.groups, "features"), _local(data.groups, "neurons")
    figures = _figures(features, neurons)
    view = [FindingLink(text="features against neurons: the scores' distributions", url=data.url)]
    if features is None and neurons is None:
        reason = f"{data.message[:1].upper()}{data.message[1:]}. " if data.message else ""
        return not_computed(KEY, TITLE, CLAIM, reason + how, figures, view if data.available else [])
    baseline: float | None = next(
        (g.baseline_logit_score for g in (features, neurons) if g and g.baseline_logit_score), None
    )
    ci: dict[str, Any] = {
        unit: group.ci if group else None for unit, group in (("features", features), ("neurons", neurons))
    }
    details = {
        "explainer": (features or neurons).explainer,  # type: ignore[union-attr]
        "paper": data.paper,
        "baseline_logit_score": baseline,
        "ci": ci,
        **{
            unit: group.model_dump(exclude={"scores", "logit_scores", "top_random_scores"}) if group else None
            for unit, group in (("features", features), ("neurons", neurons))
        },
    }
    return Finding(
        key=KEY,
        title=TITLE,
        claim=CLAIM,
        status="computed",
        figures=figures,
        note="Ours: automatic, with a local explainer in place of the paper's LLM. "
        + data.method
        + (f" Missing: {data.message}." if data.message else ""),
        links=view,
        details=details,
        baseline_logit_score=baseline,
        ci=ci,
    )
