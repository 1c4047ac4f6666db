"""The front page (all runs) and one run's page: config, metrics, charts, feature list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field, field_validator
from starlette.responses import Response

from app import links
from app.deps import SessionDep
from app.findings.density import PAPER_DEAD, PAPER_ULTRALOW, density_summary
from app.models import FeatureListFilters, RunDetail, RunList, SortKey, SortOrder, blank_is_none
from app.pages import charts
from app.pages.templating import render
from app.queries import runs
from app.responses import READ_RESPONSES, RUN_RESPONSES

router = APIRouter(tags=["runs"])

RunSlug = Annotated[str, Path(max_length=200, description="The run's slug.")]


class FeatureListQuery(BaseModel):
    """View state of a run's feature list: all of it lives in the query string."""

    sort: SortKey = "index"
    order: SortOrder = "asc"
    page: int = Field(1, ge=1, le=1_000_000)
    size: int = Field(runs.PAGE_SIZE_DEFAULT, ge=1, le=runs.PAGE_SIZE_MAX)
    q: str | None = Field(None, max_length=200, description="Substring of the label.")
    token: str | None = Field(None, max_length=100, description="Substring of a token the feature fires on.")
    density_min: float | None = Field(None, ge=0, le=1)
    density_max: float | None = Field(None, ge=0, le=1)

    @field_validator("density_min", "density_max", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return blank_is_none(value)

    def filters(self) -> FeatureListFilters:
        return FeatureListFilters(
            q=self.q or None,
            token=self.token or None,
            density_min=self.density_min,
            density_max=self.density_max,
        )


class ApiFeatureListQuery(FeatureListQuery):
    """The JSON API's: it is not a form, so an empty density is a bad number (422), not "any"."""

    @field_validator("density_min", "density_max", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return value


def _run_detail(request: Request, session: SessionDep, run: str, view: FeatureListQuery) -> RunDetail:
    record = runs.get_run(session, run)
    features = runs.list_features(
        session,
        record,
        sort=view.sort,
        order=view.order,
        page=view.page,
        size=view.size,
        filters=view.filters(),
    )
    detail = runs.run_detail(session, record, features, request.app.state.schema_version)
    detail.density_summary = density_summary(session, record)
    return detail


@router.get("/api/runs", response_model=RunList, responses=READ_RESPONSES)
def list_runs(session: SessionDep) -> RunList:
    """All runs: complete ones (browsable), and running or failed ones apart."""
    return runs.list_runs(session)


@router.get("/", include_in_schema=False)
def show_runs(request: Request, session: SessionDep) -> Response:
    return render(request, "runs.html", {"data": runs.list_runs(session)})


@router.get("/api/runs/{run}", response_model=RunDetail, responses=RUN_RESPONSES)
def read_run(
    request: Request, session: SessionDep, run: RunSlug, view: Annotated[ApiFeatureListQuery, Query()]
) -> RunDetail:
    """A run's config, metrics, density histogram, feature map, training log and one page of its
    features."""
    return _run_detail(request, session, run, view)


@router.get("/runs/{run}", include_in_schema=False)
def show_run(
    request: Request, session: SessionDep, run: RunSlug, view: Annotated[FeatureListQuery, Query()]
) -> Response:
    data = _run_detail(request, session, run, view)
    context = {
        "data": data,
        "view": view,
        "density_chart": charts.density_histogram(data.density_histogram, data.density_summary),
        "paper_density": {"dead": PAPER_DEAD, "ultralow": PAPER_ULTRALOW},
        "training_charts": charts.training_curves(data.training_log),
        "map_chart": charts.feature_map(
            data.feature_map,
            "neuron" if data.run.kind == "neurons" else "feature",
            links.feature_url_template(data.run.slug),
        ),
    }
    return render(request, "run.html", context)
