"""Claim: features split into finer ones as the dictionary grows (the paper's experiment 3), read
from the matches between the model's dictionary sizes (app/queries/splitting.py)."""

from __future__ import annotations

from sqlalchemy import select

from app.family_models import FAMILY_THRESHOLD
from app.findings import commands
from app.findings.context import FindingsContext, figure, not_computed, pct
from app.models import Finding, FindingFigure, FindingLink
from app.queries.splitting import splitting_view
from trainer.store.schema import Run, RunLink

KEY, TITLE = "splitting", "Features split as the dictionary grows"
CLAIM = (
    "As the dictionary grows, one feature splits into several finer ones; the paper links features "
    "of different sizes when their activations' similarity exceeds about 0.4."
)
THRESHOLD_FIGURE = ("link threshold (activation correlation)", 0.4, "~0.4 (activation cosine)")


def _how(ctx: FindingsContext, run: Run | None) -> str:
    """The command that links this model's dictionaries: match the ones it has, else train another."""
    if run is None:
        return f"Not computed for this run: it has no SAE; run `{commands.analyze(ctx.run)}` to analyse one."
    prefix = "Not computed for this run"
    if not ctx.has_table(RunLink.__tablename__):
        prefix = "This database predates feature matching; not computed for this run"
    other = ctx.session.scalars(
        select(Run)
        .where(
            Run.model_name == run.model_name,
            Run.kind == "sae",
            Run.status == "complete",
            Run.d_in == run.d_in,
            Run.n_features != run.n_features,
        )
        .order_by(Run.n_features.desc())
        .limit(1)
    ).first()
    if other is not None:
        return f"{prefix}: run `{commands.match(run, other)}` to compute it."
    sizes = (run.n_features, max(1, run.n_features // 2))
    train = commands.stages(run, ["train-sae", "evaluate", "analyze"], sizes=sizes)
    return f"{prefix}: run `{train}` to compute it (it trains a dictionary of {sizes[1]} features too and matches the two)."


def claim(ctx: FindingsContext) -> Finding:
    run = ctx.feature_run
    threshold = figure(THRESHOLD_FIGURE[0], THRESHOLD_FIGURE[1], THRESHOLD_FIGURE[2], None, "–")
    view = splitting_view(ctx.session, run, FAMILY_THRESHOLD, with_map=False) if run is not None else None
    if view is None or not view.pairs:
        return not_computed(KEY, TITLE, CLAIM, _how(ctx, run), [threshold])
    threshold.ours, threshold.ours_text = FAMILY_THRESHOLD, f"{FAMILY_THRESHOLD:g} (activation correlation)"
    figures: list[FindingFigure] = [threshold]
    page_links = [FindingLink(text="feature splitting across the model's sizes, and their map", url=view.url)]
    for pair in view.pairs:
        sizes = f"{pair.small.n_features} → {pair.large.n_features}"
        figures += [
            figure(
                f"{sizes}: features with a child in the larger dictionary",
                None,
                "not stated",
                pair.parent_share,
                f"{pct(pair.parent_share)} ({pair.n_parents} of {pair.small.n_features})",
            ),
            figure(
                f"{sizes}: features that split into two or more",
                None,
                "not stated",
                pair.n_split / pair.small.n_features if pair.small.n_features else None,
                f"{pair.n_split} of {pair.small.n_features}",
            ),
        ]
        page_links += [
            FindingLink(
                text=f"family of feature {family.index} of {pair.small.slug} ({family.n_children} children"
                f" among {pair.large.n_features}): {family.label}"[:100],
                url=family.url,
            )
            for family in pair.largest_families[:1]
        ]
    return Finding(
        key=KEY,
        title=TITLE,
        claim=CLAIM,
        status="computed",
        figures=figures,
        note=f"Ours: a feature's children are the features of the next larger dictionary whose best "
        f"match in it is that feature, with activation correlation ≥ {FAMILY_THRESHOLD:g} over the same "
        "held-out tokens (Pearson correlation; the paper states its threshold for the cosine similarity "
        "of activations).",
        links=page_links,
        details={"threshold": view.threshold, "pairs": [pair.model_dump() for pair in view.pairs]},
    )
