"""The feature (or neuron) page: the page people share."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from app import charts, family_queries, interpretability, queries
from app.deps import SessionDep
from app.models import FeatureDetail
from app.responses import RUN_RESPONSES
from app.routes.runs import RunSlug
from app.templating import render

router = APIRouter(tags=["features"])

FeatureIndex = Annotated[int, Path(ge=0, le=100_000_000, description="The feature's (or neuron's) index.")]


def _feature(session: SessionDep, run: str, index: int) -> FeatureDetail:
    record = queries.get_run(session, run)
    detail = queries.get_feature(session, record, index)
    detail.matches = family_queries.feature_matches(session, record, index)
    detail.interpretations = interpretability.feature_interpretations(session, record, index)
    return detail


@router.get("/api/runs/{run}/features/{index}", response_model=FeatureDetail, responses=RUN_RESPONSES)
def read_feature(session: SessionDep, run: RunSlug, index: FeatureIndex) -> FeatureDetail:
    """One feature: label, density, histograms, logit effects, top and interval examples."""
    return _feature(session, run, index)


@router.get("/runs/{run}/features/{index}", include_in_schema=False)
def show_feature(request: Request, session: SessionDep, run: RunSlug, index: FeatureIndex) -> Response:
    data = _feature(session, run, index)
    context = {
        "data": data,
        "activation_chart": charts.activation_histogram(data.activation_histogram, data.band_edges),
        "logit_chart": charts.logit_histogram(data.logit_histogram),
        "band_colours": charts.BAND_COLOURS,
    }
    return render(request, "feature.html", context)
