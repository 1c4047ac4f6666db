"""A run's findings page: the paper's claims, its numbers beside ours, each linking to the views."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app import queries
from app.deps import SessionDep
from app.findings import build_findings
from app.models import Findings
from app.responses import RUN_RESPONSES
from app.routes.runs import RunSlug
from app.templating import render

router = APIRouter(tags=["findings"])


def _findings(session: SessionDep, run: str) -> Findings:
    return build_findings(session, queries.get_run(session, run))


@router.get("/api/runs/{run}/findings", response_model=Findings, responses=RUN_RESPONSES)
def read_findings(session: SessionDep, run: RunSlug) -> Findings:
    """Each of the paper's claims with the paper's number and this run's side by side; claims
    this run has no numbers for say so (status "not_computed") and how to compute them."""
    return _findings(session, run)


@router.get("/runs/{run}/findings", include_in_schema=False)
def show_findings(request: Request, session: SessionDep, run: RunSlug) -> Response:
    return render(request, "findings.html", {"data": _findings(session, run)})
