"""The study's views: a feature's family across dictionary sizes (feature splitting) and a run's
best-match correlations against a model trained from another seed (universality)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from app import family_charts, family_queries, queries, splitting
from app.deps import SessionDep
from app.family_models import FamilyTree, UniversalityView
from app.responses import RUN_RESPONSES
from app.routes.features import FeatureIndex
from app.routes.runs import RunSlug
from app.splitting import SplittingView
from app.templating import render

router = APIRouter(tags=["study"])

OtherRun = Annotated[str | None, Query(max_length=200, description="Only the model of this run (its slug).")]


def _family(session: SessionDep, run: str, index: int) -> FamilyTree:
    return family_queries.family_tree(session, queries.get_run(session, run), index)


@router.get("/api/runs/{run}/features/{index}/family", response_model=FamilyTree, responses=RUN_RESPONSES)
def read_family(session: SessionDep, run: RunSlug, index: FeatureIndex) -> FamilyTree:
    """A feature's family across dictionary sizes: ancestors and descendants by activation correlation."""
    return _family(session, run, index)


@router.get("/runs/{run}/features/{index}/family", include_in_schema=False)
def show_family(request: Request, session: SessionDep, run: RunSlug, index: FeatureIndex) -> Response:
    data = _family(session, run, index)
    return render(request, "family.html", {"data": data, "tree_chart": family_charts.family_tree(data)})


def _universality(session: SessionDep, run: str, other: str | None) -> UniversalityView:
    return family_queries.universality(session, queries.get_run(session, run), other or None)


@router.get("/api/runs/{run}/universality", response_model=UniversalityView, responses=RUN_RESPONSES)
def read_universality(session: SessionDep, run: RunSlug, other: OtherRun = None) -> UniversalityView:
    """Best-match activation correlations of this model's features and neurons in another model's."""
    return _universality(session, run, other)


@router.get("/runs/{run}/universality", include_in_schema=False)
def show_universality(
    request: Request, session: SessionDep, run: RunSlug, other: OtherRun = None
) -> Response:
    data = _universality(session, run, other)
    chart = family_charts.best_match_histograms(data.features, data.neurons)
    return render(request, "universality.html", {"data": data, "histogram_chart": chart})


def _splitting(session: SessionDep, run: str) -> SplittingView:
    return splitting.splitting_view(session, queries.get_run(session, run))


@router.get("/api/runs/{run}/splitting", response_model=SplittingView, responses=RUN_RESPONSES)
def read_splitting(session: SessionDep, run: RunSlug) -> SplittingView:
    """Feature splitting across the run's dictionary sizes: children per feature and the largest families."""
    return _splitting(session, run)


@router.get("/runs/{run}/splitting", include_in_schema=False)
def show_splitting(request: Request, session: SessionDep, run: RunSlug) -> Response:
    data = _splitting(session, run)
    return render(
        request, "splitting.html", {"data": data, "map_chart": family_charts.size_map(data.size_map)}
    )
