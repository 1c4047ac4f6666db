"""The feature (or neuron) page: the page people share."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from app.deps import SessionDep
from app.models import FeatureDetail
from app.pages import charts
from app.pages.twins import data_page
from app.queries import families, interpretability, runs
from app.responses import RUN_RESPONSES
from app.routes.runs import RunSlug

router = APIRouter(tags=["features"])

FeatureIndex = Annotated[int, Path(ge=0, le=100_000_000, description="The feature's (or neuron's) index.")]


def _feature_charts(data: FeatureDetail) -> dict[str, Any]:
    return {
        "activation_chart": charts.activation_histogram(data.activation_histogram, data.band_edges),
        "logit_chart": charts.logit_histogram(data.logit_histogram),
        "band_colours": charts.BAND_COLOURS,
    }


@data_page(router, "/runs/{run}/features/{index}", "feature.html", RUN_RESPONSES, _feature_charts)
def read_feature(session: SessionDep, run: RunSlug, index: FeatureIndex) -> FeatureDetail:
    """One feature: label, density, histograms, logit effects, top and interval examples."""
    record = runs.get_run(session, run)
    detail = runs.get_feature(session, record, index)
    detail.matches = families.feature_matches(session, record, index)
    detail.interpretations = interpretability.feature_interpretations(session, record, index)
    return detail
