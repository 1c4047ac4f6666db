"""Interpretability of a run's units against its model's other basis: features vs neurons."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import SessionDep
from app.pages.twins import data_page
from app.queries import interpretability, runs
from app.queries.interpretability import InterpretabilityComparison
from app.responses import RUN_RESPONSES
from app.routes.runs import RunSlug

router = APIRouter(tags=["interpretability"])


def _comparison_charts(data: InterpretabilityComparison) -> dict[str, Any]:
    return {"interp_charts": interpretability.comparison_charts(data)}


@data_page(router, "/runs/{run}/interpretability", "interpretability.html", RUN_RESPONSES, _comparison_charts)
def read_interpretability(session: SessionDep, run: RunSlug) -> InterpretabilityComparison:
    """Automatic interpretability scores of the run's units and its model's other basis, with medians."""
    return interpretability.interpretability_comparison(session, runs.get_run(session, run))
