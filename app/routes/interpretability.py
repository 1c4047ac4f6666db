"""Interpretability of a run's units against its model's other basis: features vs neurons."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app import interpretability, queries
from app.deps import SessionDep
from app.interpretability import InterpretabilityComparison
from app.responses import RUN_RESPONSES
from app.routes.runs import RunSlug
from app.templating import render

router = APIRouter(tags=["interpretability"])


def _comparison(session: SessionDep, run: str) -> InterpretabilityComparison:
    return interpretability.interpretability_comparison(session, queries.get_run(session, run))


@router.get(
    "/api/runs/{run}/interpretability", response_model=InterpretabilityComparison, responses=RUN_RESPONSES
)
def read_interpretability(session: SessionDep, run: RunSlug) -> InterpretabilityComparison:
    """Automatic interpretability scores of the run's units and its model's other basis, with medians."""
    return _comparison(session, run)


@router.get("/runs/{run}/interpretability", include_in_schema=False)
def show_interpretability(request: Request, session: SessionDep, run: RunSlug) -> Response:
    data = _comparison(session, run)
    context = {"data": data, "interp_charts": interpretability.comparison_charts(data)}
    return render(request, "interpretability.html", context)
