"""A run's findings page: the paper's claims, its numbers beside ours, each linking to the views."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import SessionDep
from app.findings import build_findings
from app.models import Findings
from app.pages.twins import data_page
from app.queries import runs
from app.responses import RUN_RESPONSES
from app.routes.runs import RunSlug

router = APIRouter(tags=["findings"])


@data_page(router, "/runs/{run}/findings", "findings.html", RUN_RESPONSES)
def read_findings(session: SessionDep, run: RunSlug) -> Findings:
    """Each of the paper's claims with the paper's number and this run's side by side; claims
    this run has no numbers for say so (status "not_computed") and how to compute them."""
    return build_findings(session, runs.get_run(session, run))
