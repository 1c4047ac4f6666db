"""The study's views: a feature's family across dictionary sizes (feature splitting) and a run's
best-match correlations against a model trained from another seed (universality)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.deps import SessionDep
from app.family_models import FamilyTree, UniversalityView
from app.pages import family_charts
from app.pages.twins import data_page
from app.queries import families, runs, splitting
from app.queries.splitting import SplittingView
from app.responses import RUN_RESPONSES
from app.routes.features import FeatureIndex
from app.routes.runs import RunSlug

router = APIRouter(tags=["study"])

OtherRun = Annotated[str | None, Query(max_length=200, description="Only the model of this run (its slug).")]


def _family_chart(data: FamilyTree) -> dict[str, Any]:
    return {"tree_chart": family_charts.family_tree(data)}


@data_page(router, "/runs/{run}/features/{index}/family", "family.html", RUN_RESPONSES, _family_chart)
def read_family(session: SessionDep, run: RunSlug, index: FeatureIndex) -> FamilyTree:
    """A feature's family across dictionary sizes: ancestors and descendants by activation correlation."""
    return families.family_tree(session, runs.get_run(session, run), index)


def _universality_chart(data: UniversalityView) -> dict[str, Any]:
    return {"histogram_chart": family_charts.best_match_histograms(data.features, data.neurons)}


@data_page(router, "/runs/{run}/universality", "universality.html", RUN_RESPONSES, _universality_chart)
def read_universality(session: SessionDep, run: RunSlug, other: OtherRun = None) -> UniversalityView:
    """Best-match activation correlations of this model's features and neurons in another model's."""
    return families.universality(session, runs.get_run(session, run), other or None)


def _splitting_chart(data: SplittingView) -> dict[str, Any]:
    return {"map_chart": family_charts.size_map(data.size_map)}


@data_page(router, "/runs/{run}/splitting", "splitting.html", RUN_RESPONSES, _splitting_chart)
def read_splitting(session: SessionDep, run: RunSlug) -> SplittingView:
    """Feature splitting across the run's dictionary sizes: children per feature and the largest families."""
    return splitting.splitting_view(session, runs.get_run(session, run))
