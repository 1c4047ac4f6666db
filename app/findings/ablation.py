"""Claim: features have downstream effects one can read off the examples (the paper's blue/red
underlines): removing a feature where it fires lowers the probability of the actual next token."""

from __future__ import annotations

from typing import Any

from app import links
from app.findings.context import FindingsContext, figure, not_computed, pct
from app.models import Finding, FindingLink
from app.queries.runs import feature_labels
from trainer.store.schema import ExampleEffect, Run

KEY, TITLE = "ablation", "Features help predict the next token where they fire"
CLAIM = (
    "Each feature page shows, under every token of its examples, how the log-probability of the "
    "actual next token changes when the feature is removed there: blue where the feature helped, "
    "red where it hurt. The paper shows these per feature and gives no run-wide number."
)
HOW = (
    "Analyse the run again with this version (`monosemantic analyze`): it stores the effects of "
    "every top example."
)


def _side(
    ctx: FindingsContext, run: Run | None, unit: str
) -> tuple[dict[str, Any] | None, list[FindingLink]]:
    data = ctx.run_finding(run, KEY)
    if run is None or data is None:
        return None, []
    helpful = [h for h in data.get("most_helpful") or [] if isinstance(h, dict) and "index" in h][:5]
    labels = feature_labels(ctx.session, run.id, [int(h["index"]) for h in helpful])
    page_links = [
        FindingLink(
            text=f"{unit} {int(h['index'])}: {labels.get(int(h['index']), '')}"[:80]
            + f" (focus token {float(h.get('mean_focus_effect', 0.0)):+.3g} nats)",
            url=links.feature_url(run.slug, int(h["index"])),
        )
        for h in helpful
    ]
    return data, page_links


def _number(data: dict[str, Any] | None, key: str) -> float | None:
    value = (data or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def claim(ctx: FindingsContext) -> Finding:
    if not ctx.has_table(ExampleEffect.__tablename__):
        return not_computed(KEY, TITLE, CLAIM, "This database predates ablation effects. " + HOW)
    features, feature_links = _side(ctx, ctx.feature_run, "feature")
    neurons, neuron_links = _side(ctx, ctx.neuron_run, "neuron")
    figures = []
    for unit, data in (("features", features), ("neurons", neurons)):
        helped, focus = _number(data, "helped_share"), _number(data, "median_focus_effect")
        figures += [
            figure(
                f"share of firing tokens where removing the {unit[:-1]} lowers log p(next), {unit}",
                None,
                "not stated (shown per example)",
                helped,
                pct(helped) if data else "not computed",
            ),
            figure(
                f"median change at the top examples' focus token, {unit}",
                None,
                "not stated",
                focus,
                f"{focus:+.3g} nats" if focus is not None else ("–" if data else "not computed"),
            ),
        ]
    if features is None and neurons is None:
        return not_computed(KEY, TITLE, CLAIM, HOW, figures)
    return Finding(
        key=KEY,
        title=TITLE,
        claim=CLAIM,
        status="computed",
        figures=figures,
        note="Ours: every token of every top example where the unit fires; the unit's contribution "
        "a·W_dec[i] removed from the SAE reconstruction spliced into the MLP output (for neurons: the "
        "neuron zeroed), at that token only.",
        links=[*feature_links, *neuron_links],
        details={"features": features, "neurons": neurons},
    )
