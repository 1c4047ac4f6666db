"""Claim: feature densities form a bimodal histogram, with dead features and an ultralow cluster.

Definitions (ours, stated on the pages): dead = never fired on the analysed tokens; ultralow =
fired, but on fewer than 1 in 100,000 of them (density < 1e-5). The paper separates its ultralow
cluster by the valley of its log-density histogram; for A/1/4096 that cluster lies below the main
mode, and 1e-5 is a fixed cut between them that needs no fitting (for the paper's largest
dictionaries the main mode itself sits near 1e-5, so the cut suits A/1-sized runs). A run that
analysed 100,000 tokens or fewer cannot tell an ultralow feature from a dead one (one firing is
already a density of 1e-5): its ultralow share is reported as not measurable.
"""

from __future__ import annotations

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app import links
from app.findings.context import FindingsContext, figure, not_computed, pct
from app.models import DensitySummary, Finding, FindingLink
from trainer.store.schema import Feature, Run

KEY, TITLE = "density", "Dead and ultralow-density features"
CLAIM = (
    "Feature densities are bimodal: besides the main cluster, an ultralow-density cluster; some "
    "features never fire (A/1/4096: 168 dead, 4.1%; 292 ultralow, 7.1%)."
)
ULTRALOW_DENSITY = 1e-5
PAPER_DEAD, PAPER_ULTRALOW = 0.041, 0.071


def density_summary(session: Session, run: Run) -> DensitySummary:
    """Dead and ultralow counts of a run's units, in one query over its features' densities."""
    n_units, n_dead, n_low = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((Feature.density <= 0, 1), else_=0)), 0),
            func.coalesce(
                func.sum(case(((Feature.density > 0) & (Feature.density < ULTRALOW_DENSITY), 1), else_=0)), 0
            ),
        ).where(Feature.run_id == run.id)
    ).one()
    n_tokens = int(run.n_tokens_analyzed or 0)
    min_density = 1.0 / n_tokens if n_tokens > 0 else None
    measurable = min_density is not None and min_density < ULTRALOW_DENSITY
    return DensitySummary(
        n_units=int(n_units),
        n_tokens_analyzed=n_tokens,
        min_density=min_density,
        ultralow_threshold=ULTRALOW_DENSITY,
        n_dead=int(n_dead),
        n_ultralow=int(n_low) if measurable else None,
        dead_share=int(n_dead) / n_units if n_units else None,
        ultralow_share=int(n_low) / n_units if n_units and measurable else None,
    )


def _ours(summary: DensitySummary | None, share: str) -> tuple[float | None, str]:
    if summary is None:
        return None, "no run"
    value: float | None = getattr(summary, share)
    if value is None:
        return None, "not measurable: 100,000 tokens or fewer analysed" if summary.n_units else "–"
    count = summary.n_dead if share == "dead_share" else summary.n_ultralow
    return value, f"{pct(value)} ({count} of {summary.n_units})"


def claim(ctx: FindingsContext) -> Finding:
    runs = {"features": ctx.feature_run, "neurons": ctx.neuron_run}
    summaries = {unit: density_summary(ctx.session, run) if run else None for unit, run in runs.items()}
    figures = []
    for unit, summary in summaries.items():
        for name, share, paper, paper_text in (
            ("dead", "dead_share", PAPER_DEAD, "4.1% (168 of 4,096)"),
            ("ultralow (density < 1e-5)", "ultralow_share", PAPER_ULTRALOW, "7.1% (292 of 4,096)"),
        ):
            ours, ours_text = _ours(summary, share)
            if unit == "features":
                figures.append(figure(f"{name}, features", paper, paper_text, ours, ours_text))
            else:
                figures.append(figure(f"{name}, neurons", None, "not stated", ours, ours_text))
    if all(s is None for s in summaries.values()):
        return not_computed(KEY, TITLE, CLAIM, "Analyse the SAE: `monosemantic analyze`.", figures)
    page_links = []
    for unit, run in runs.items():
        if run is None:
            continue
        page_links.append(
            FindingLink(text=f"density histogram of the {unit}", url=f"{links.run_url(run.slug)}#density")
        )
        summary = summaries[unit]
        if summary is not None and summary.n_ultralow:
            low = links.run_url(run.slug, density_min=1e-12, density_max=ULTRALOW_DENSITY, sort="density")
            page_links.append(FindingLink(text=f"the ultralow {unit}", url=f"{low}#features"))
    return Finding(
        key=KEY,
        title=TITLE,
        claim=CLAIM,
        status="computed",
        figures=figures,
        note="Ours: densities over the analysed held-out tokens. Dead: never fired there. Ultralow: "
        "fired on fewer than 1 in 100,000 of them (density below 1e-5, a fixed cut between the paper's "
        "two clusters for A/1; the paper separates them by the histogram's valley).",
        links=page_links,
        details={unit: s.model_dump() if s else None for unit, s in summaries.items()},
    )
