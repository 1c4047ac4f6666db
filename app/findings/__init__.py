"""The findings page: each of the paper's claims with its number beside ours, linking to the views.

A claim is a function `(FindingsContext) -> Finding` (one module of this package each), listed in
`CLAIMS`, and a partial `templates/findings/_<key>.html` that shows it (most call the `figures`
macro of `templates/findings/_claim.html`, then add their own view). A claim reads only its own
stored numbers; when a run lacks them it returns `not_computed(...)`, which says how to compute
them. A database from before a claim's tables existed lacks those tables: `ctx.has_table` says so
(the app never migrates a database, it is read-only).

To add a claim: write its function, add it to `CLAIMS`, add its partial.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from app import links
from app.findings import (
    ablation,
    case_studies,
    density,
    interpretability,
    reconstruction,
    splitting,
    universality,
)
from app.findings.context import FindingsContext, companion_runs
from app.models import Finding, Findings
from app.queries.runs import run_ref, table_names
from trainer.store.schema import Run

Claim = Callable[[FindingsContext], Finding]

# In the paper's order: setup (reconstruction), then its experiments 1, 2, 3, 4, 5 and the feature
# pages' downstream effects.
CLAIMS: list[Claim] = [
    reconstruction.claim,
    interpretability.claim,
    case_studies.claim,
    splitting.claim,
    universality.claim,
    density.claim,
    ablation.claim,
]


def build_findings(session: Session, run: Run) -> Findings:
    """Every claim of `CLAIMS` for `run` (an SAE run, or a neuron run: then the newest SAE of its model)."""
    feature_run, neuron_run = companion_runs(session, run)
    ctx = FindingsContext(session, run, feature_run, neuron_run, table_names(session))
    return Findings(
        run=run_ref(run),
        feature_run=run_ref(feature_run) if feature_run else None,
        neuron_run=run_ref(neuron_run) if neuron_run else None,
        findings=[claim(ctx) for claim in CLAIMS],
        case_studies=case_studies.summaries(session, feature_run),
        url=links.findings_url(run.slug),
    )
