"""What every claim reads: the runs compared, the session, and which tables the database has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Finding, FindingFigure, FindingLink
from trainer.store.schema import Run, RunFinding


def companion_runs(session: Session, run: Run) -> tuple[Run | None, Run | None]:
    """(feature run, neuron run) compared on `run`'s findings page: the run itself for its own
    kind, and the newest complete run of the other kind of the same model."""
    other_kind = "neurons" if run.kind == "sae" else "sae"
    other = session.scalars(
        select(Run)
        .where(Run.model_name == run.model_name, Run.kind == other_kind, Run.status == "complete")
        .order_by(Run.completed_at.desc(), Run.id.desc())
        .limit(1)
    ).one_or_none()
    return (run, other) if run.kind == "sae" else (other, run)


@dataclass(frozen=True)
class FindingsContext:
    session: Session
    run: Run  # the page's run
    feature_run: Run | None
    neuron_run: Run | None
    tables: frozenset[str]

    def has_table(self, name: str) -> bool:
        return name in self.tables

    def run_finding(self, run: Run | None, key: str) -> dict[str, Any] | None:
        """The stored RunFinding `key` of `run`; None if absent (or the database predates them)."""
        if run is None or not self.has_table(RunFinding.__tablename__):
            return None
        data = self.session.scalars(
            select(RunFinding.data).where(RunFinding.run_id == run.id, RunFinding.key == key)
        ).one_or_none()
        return data if isinstance(data, dict) else None


def figure(
    name: str, paper: float | None, paper_text: str, ours: float | None, ours_text: str
) -> FindingFigure:
    return FindingFigure(name=name, paper=paper, paper_text=paper_text, ours=ours, ours_text=ours_text)


def not_computed(
    key: str,
    title: str,
    claim: str,
    how: str,
    figures: list[FindingFigure] | None = None,
    links: list[FindingLink] | None = None,
) -> Finding:
    """A claim this run has no numbers for: the paper's side only, and how to compute ours."""
    return Finding(
        key=key,
        title=title,
        claim=claim,
        status="not_computed",
        figures=figures or [],
        how_to_compute=how,
        links=links or [],
    )


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"
