"""Claim: the same features appear in a model trained from another seed (the paper's experiment
4), read from the best-match histograms of the 'seeds' links (app/queries/families.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.family_models import PAPER_MEDIAN_FEATURES, PAPER_MEDIAN_NEURONS, BestMatchHistogram, MedianCI
from app.findings import commands
from app.findings.context import FindingsContext, figure, not_computed
from app.models import Finding, FindingFigure, FindingLink
from app.queries.families import mismatch, universality
from trainer.store.schema import Run, RunLink

KEY, TITLE = "universality", "The same features appear in another model"
CLAIM = (
    "Model B, trained like A from another seed, has features matching A's: the median best-match "
    "activation correlation is 0.72 for features against 0.46 for neurons."
)


def _model_b(ctx: FindingsContext, run: Run) -> tuple[Run | None, Run | None]:
    """An SAE of another model that could be matched with `run` (same width and tokenizer), and
    that model's neurons."""
    candidates = ctx.session.scalars(
        select(Run)
        .where(
            Run.model_name != run.model_name,
            Run.kind == "sae",
            Run.status == "complete",
            Run.d_in == run.d_in,
        )
        .order_by((Run.n_features == run.n_features).desc(), Run.id.desc())
    ).all()
    for other in candidates:
        if mismatch(ctx.session, run, other) is None:
            neurons = ctx.session.scalars(
                select(Run).where(
                    Run.model_name == other.model_name, Run.kind == "neurons", Run.status == "complete"
                )
            ).first()
            return other, neurons
    return None, None


def _how(ctx: FindingsContext) -> str:
    run = ctx.feature_run
    prefix = "Not computed for this run"
    if not ctx.has_table(RunLink.__tablename__):
        prefix = "This database predates feature matching; not computed for this run"
    if run is None:
        return f"{prefix}: it has no SAE; run `{commands.analyze(ctx.run)}` to analyse one."
    other, other_neurons = _model_b(ctx, run)
    if other is not None:
        steps = [commands.match(run, other)]
        if ctx.neuron_run is not None and other_neurons is not None:
            steps.append(commands.match(ctx.neuron_run, other_neurons))
        return f"{prefix}: run `{'; '.join(steps)}` to compute it."
    train_b = commands.stages(run, ["train-lm", "harvest", "train-sae", "evaluate", "analyze"], seed_b=1)
    return (
        f"{prefix}: run `{train_b}` to compute it (it trains model B from seed 1 beside this model, "
        "then matches the two)."
    )


def _median(histograms: list[BestMatchHistogram], slug: str | None) -> BestMatchHistogram | None:
    """The histogram of run `slug` (the page's), else the first."""
    return next((h for h in histograms if h.run.slug == slug), histograms[0] if histograms else None)


def _ci_text(item: MedianCI | None) -> str:
    if item is None or item.median is None:
        return "–"
    interval = f" [{item.ci[0]:.2f}, {item.ci[1]:.2f}]" if item.ci else ""
    return f"{item.median:.3g}{interval} (n {item.n})"


def _controls(
    features: BestMatchHistogram | None,
    neurons: BestMatchHistogram | None,
    yardstick: BestMatchHistogram | None,
) -> tuple[list[FindingFigure], dict[str, Any]]:
    """The controls of issue 21 as figures and API details: the seed-only yardstick, medians over
    alive units and by density floor, each with its bootstrap interval."""
    figures = [
        figure(
            "yardstick: the same model's SAE from another SAE seed",
            None,
            "not stated (A vs B: 0.72)",
            yardstick.median if yardstick else None,
            _ci_text(yardstick.summary.overall if yardstick and yardstick.summary else None)
            if yardstick
            else "not computed",
        )
    ]
    details: dict[str, Any] = {
        "yardstick_median": yardstick.median if yardstick else None,
        "median_by_density": {},
        "ci": {},
    }
    for unit, item in (("features", features), ("neurons", neurons), ("yardstick", yardstick)):
        summary = item.summary if item else None
        if summary is None:
            continue
        details["ci"][unit] = summary.overall.ci
        details["median_by_density"][unit] = {floor: m.median for floor, m in summary.by_density.items()}
        details[f"{unit}_summary"] = summary.model_dump()
        if unit == "yardstick":
            continue
        if summary.alive is not None:
            figures.append(
                figure(f"median over alive {unit}", None, "–", summary.alive.median, _ci_text(summary.alive))
            )
        for floor, entry in summary.by_density.items():
            figures.append(
                figure(f"median over {unit} of density ≥ {floor}", None, "–", entry.median, _ci_text(entry))
            )
    return figures, details


def claim(ctx: FindingsContext) -> Finding:
    run = ctx.feature_run or ctx.neuron_run or ctx.run
    view = universality(ctx.session, run) if ctx.has_table(RunLink.__tablename__) else None
    features = _median(view.features, ctx.feature_run.slug if ctx.feature_run else None) if view else None
    neurons = _median(view.neurons, ctx.neuron_run.slug if ctx.neuron_run else None) if view else None
    yardstick = (
        next((h for h in view.yardstick if ctx.feature_run and h.run.slug == ctx.feature_run.slug), None)
        if view
        else None
    )
    figures = []
    for unit, paper, item in (
        ("features", PAPER_MEDIAN_FEATURES, features),
        ("neurons", PAPER_MEDIAN_NEURONS, neurons),
    ):
        ours = item.median if item else None
        text = (
            "not matched"
            if item is None
            else ("–" if ours is None else f"{ours:.3g} (against {item.other.slug})")
        )
        if item is not None and item.summary is not None and ours is not None:
            text = f"{_ci_text(item.summary.overall)} (against {item.other.slug})"
        figures.append(figure(f"median best-match correlation, {unit}", paper, f"{paper:g}", ours, text))
    control_figures, control_details = _controls(features, neurons, yardstick)
    figures += control_figures
    if view is None or (features is None and neurons is None):
        finding = not_computed(KEY, TITLE, CLAIM, _how(ctx), figures)
        finding.details = control_details
        return _with_controls(finding, control_details)
    finding = Finding(
        key=KEY,
        title=TITLE,
        claim=CLAIM,
        status="computed",
        figures=figures,
        note="Ours: for every unit of this model, the Pearson correlation of its activations with its "
        "best match among the other model's units of the same kind, over the same held-out tokens (fp32). "
        "Brackets: 95% bootstrap interval of the median over units. The yardstick matches two SAEs "
        "of one model that differ only in their seed: what A against B could reach.",
        links=[FindingLink(text="the best-match histograms, features against neurons", url=view.url)],
        details={
            **{
                unit: item.model_dump(exclude={"edges", "counts", "summary"}) if item else None
                for unit, item in (("features", features), ("neurons", neurons))
            },
            **control_details,
        },
    )
    return _with_controls(finding, control_details)


def _with_controls(finding: Finding, controls: dict[str, Any]) -> Finding:
    """The API contract's top-level fields: the yardstick, the features' medians by density, CIs."""
    finding.yardstick_median = controls.get("yardstick_median")
    by_density = controls.get("median_by_density", {}).get("features")
    finding.median_by_density = dict(by_density) if by_density else None
    finding.ci = controls.get("ci") or None
    return finding
