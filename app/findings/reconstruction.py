"""Setup claim: the SAE's reconstruction keeps most of what the MLP does for the loss, at low L0."""

from __future__ import annotations

import math
from typing import Any

from app import links
from app.findings.context import FindingsContext, figure, not_computed, pct
from app.models import Finding, FindingLink

KEY, TITLE = "reconstruction", "The SAE stands in for the MLP"
CLAIM = (
    "Splicing the SAE's reconstruction in place of the MLP activations keeps most of the MLP's "
    "loss reduction (A/1/4096: 79%; A/5/131072: 94.5%) with few features active per token (L0 "
    "below 10-20 is the aim)."
)
PAPER_LOSS_RECOVERED = 0.79


def _number(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def claim(ctx: FindingsContext) -> Finding:
    run = ctx.feature_run
    paper = [
        figure("CE loss recovered", PAPER_LOSS_RECOVERED, "79% (A/1/4096)", None, "–"),
        figure("L0 (features active per token)", None, "aimed below 10-20", None, "–"),
    ]
    recovered = _number(run.metrics or {}, "ce_loss_recovered") if run else None
    if run is None or recovered is None:
        return not_computed(
            KEY,
            TITLE,
            CLAIM,
            "Evaluate the SAE and analyse it again: `monosemantic evaluate`, then `monosemantic analyze`.",
            paper,
        )
    l0 = _number(run.metrics or {}, "l0")
    paper[0].ours, paper[0].ours_text = recovered, pct(recovered)
    paper[1].ours, paper[1].ours_text = l0, "–" if l0 is None else f"{l0:.3g}"
    return Finding(
        key=KEY,
        title=TITLE,
        claim=CLAIM,
        status="computed",
        figures=paper,
        note="Ours: held-out text, the MLP activations replaced by the SAE's reconstruction against "
        "zero-ablating them (`monosemantic evaluate`).",
        links=[FindingLink(text="the run's metrics", url=links.run_url(run.slug))],
    )
