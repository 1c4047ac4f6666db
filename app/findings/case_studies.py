"""Claim: the paper's detailed case studies (its experiment 2). For a concept with a proxy, one
feature is specific to it and sensitive to it, and pinning it makes the model write it; the best
neuron is far less specific. Read from the CaseStudy rows `monosemantic case-studies` stores
(trainer/analysis/case_study_runs.py); one page per case study (`case_study_view`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import links
from app.findings.context import FindingsContext, companion_runs, figure, not_computed, pct
from app.models import (
    CaseStudyDownstream,
    CaseStudySummary,
    CaseStudyUnit,
    CaseStudyView,
    Finding,
    FindingLink,
)
from app.queries.runs import NotFoundError, feature_labels, run_ref, table_names
from trainer.analysis.proxies import BUILTIN_PROXIES, PAPER_CLAIMS
from trainer.store.schema import CaseStudy, Run

KEY, TITLE = "case_studies", "Case studies: one feature per concept, specific and sensitive"
CLAIM = (
    "For a concept one can detect with a simple proxy (Arabic script, Hebrew, base64, DNA), one "
    "feature fires almost only where the concept is (specificity) and on most of it (sensitivity), "
    "and pinning it makes the model write the concept; the neuron that best tracks it is far less "
    "specific. The paper shows these as coloured activation histograms, without one summary number."
)
NOTE = (
    "Ours: on the held-out tokens the run analysed, the feature (and the neuron) whose activations "
    "correlate best with the proxy's label; specificity is the share of its activation mass on "
    "proxy-positive tokens, sensitivity the share of proxy-positive tokens where it fires."
)
_ORDER = {proxy.name: i for i, proxy in enumerate(BUILTIN_PROXIES)}


def _rows(session: Session, run: Run) -> list[CaseStudy]:
    if CaseStudy.__tablename__ not in table_names(session):
        return []
    rows = session.scalars(select(CaseStudy).where(CaseStudy.run_id == run.id)).all()
    return sorted(rows, key=lambda row: (_ORDER.get(row.name, len(_ORDER)), row.name))


def _unit(data: dict[str, Any], kind: str) -> dict[str, Any]:
    unit = data.get(kind)
    return unit if isinstance(unit, dict) else {}


def summary(run: Run, row: CaseStudy) -> CaseStudySummary:
    data = row.data or {}
    feature, neuron = _unit(data, "feature"), _unit(data, "neuron")
    return CaseStudySummary(
        name=row.name,
        status=row.status,  # type: ignore[arg-type]  # one of CASE_STUDY_STATUSES
        n_positive=data.get("n_positive"),
        feature=feature.get("index"),
        specificity=feature.get("specificity"),
        sensitivity=feature.get("sensitivity"),
        best_neuron=neuron.get("index"),
        neuron_specificity=neuron.get("specificity"),
        neuron_sensitivity=neuron.get("sensitivity"),
        error=data.get("error"),
        url=links.case_study_url(run.slug, row.name),
        api_url=links.case_study_url(run.slug, row.name, api=True),
    )


def summaries(session: Session, feature_run: Run | None) -> list[CaseStudySummary]:
    return [summary(feature_run, row) for row in _rows(session, feature_run)] if feature_run else []


def _ours(item: CaseStudySummary) -> str:
    neuron = (
        f" · {pct(item.neuron_specificity)} (neuron {item.best_neuron})"
        if item.best_neuron is not None
        else ""
    )
    return f"{pct(item.specificity)} (feature {item.feature}){neuron}"


def claim(ctx: FindingsContext) -> Finding:
    run = ctx.feature_run
    how = (
        f"Not computed for this run: run `monosemantic case-studies --run {run.slug}` to compute them."
        if run is not None
        else "Not computed: case studies need an SAE run of this model."
    )
    items = summaries(ctx.session, run)
    figures = [
        figure(
            f"{item.name}: activation mass on the concept, best feature · best neuron",
            None,
            "most of it (shown as histograms)" if item.name in PAPER_CLAIMS else "not studied",
            item.specificity,
            _ours(item),
        )
        for item in items
        if item.status == "ok"  # the table below lists the others and why they have no numbers
    ]
    if run is None or not items:
        return not_computed(KEY, TITLE, CLAIM, how)
    return Finding(
        key=KEY,
        title=TITLE,
        claim=CLAIM,
        status="computed",
        figures=figures,
        note=NOTE,
        links=[FindingLink(text=f"case study: {item.name}", url=item.url) for item in items],
        details={"case_studies": [item.model_dump() for item in items]},
    )


# ---------------------------------------------------------------------------- the page


def _unit_view(session: Session, data: dict[str, Any], kind: str, run: Run | None) -> CaseStudyUnit | None:
    unit = _unit(data, kind)
    if "index" not in unit:
        return None
    index = int(unit["index"])
    label = feature_labels(session, run.id, [index]).get(index, "") if run is not None else ""
    return CaseStudyUnit.model_validate(
        {
            **unit,
            "kind": kind,
            "label": label,
            "url": links.feature_url(run.slug, index) if run is not None else None,
        }
    )


def _message(name: str, data: dict[str, Any], status: str) -> str | None:
    if status == "error":
        return f"The proxy {name!r} raised an error, so this case study has no numbers: {data.get('error')}"
    if status == "no_match":
        return (
            f"The proxy {name!r} matches none of the {int(data.get('n_tokens') or 0):,} held-out tokens "
            "analysed: there is nothing to measure its feature or neuron against."
        )
    return None


def case_study_view(session: Session, run: Run, name: str) -> CaseStudyView:
    """The case study `name` of `run` (for a neuron run: of its model's SAE run). Raises
    NotFoundError for a name the run has no case study of."""
    feature_run, neuron_run = companion_runs(session, run)
    rows = _rows(session, feature_run) if feature_run is not None else []
    row = next((r for r in rows if r.name == name), None)
    if feature_run is None or row is None:
        known = ", ".join(r.name for r in rows) or "none"
        raise NotFoundError(f"Run {run.slug!r} has no case study {name!r} (it has: {known}).")
    data = row.data or {}
    downstream = data.get("downstream")
    return CaseStudyView(
        run=run_ref(feature_run),
        neuron_run=run_ref(neuron_run) if neuron_run else None,
        name=row.name,
        status=row.status,  # type: ignore[arg-type]  # one of CASE_STUDY_STATUSES
        description=str(data.get("description") or ""),
        definition=str(data.get("definition") or ""),
        builtin=bool(data.get("builtin")),
        n_tokens=data.get("n_tokens"),
        n_positive=data.get("n_positive"),
        positive_score=data.get("positive_score"),
        message=_message(row.name, data, row.status),
        paper_claim=PAPER_CLAIMS.get(row.name),
        feature=_unit_view(session, data, "feature", feature_run),
        neuron=_unit_view(session, data, "neuron", neuron_run),
        downstream=CaseStudyDownstream.model_validate(downstream) if isinstance(downstream, dict) else None,
        others=[summary(feature_run, r) for r in rows if r.name != row.name],
        findings_url=links.findings_url(feature_run.slug),
        url=links.case_study_url(feature_run.slug, row.name),
    )
