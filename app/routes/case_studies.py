"""The paper's case studies: one page per concept proxy, its best feature beside its best neuron."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from app.deps import SessionDep
from app.findings.case_studies import case_study_view
from app.models import CaseStudyView
from app.pages import charts
from app.pages.twins import data_page
from app.queries import runs
from app.responses import RUN_RESPONSES
from app.routes.runs import RunSlug

router = APIRouter(tags=["case studies"])

CaseStudyName = Annotated[str, Path(max_length=64, description="The case study's proxy name.")]


def _charts(data: CaseStudyView) -> dict[str, Any]:
    return {
        "case_charts": {
            unit.kind: charts.proxy_histogram(
                unit.histogram.edges, unit.histogram.positive, unit.histogram.negative, unit.kind
            )
            for unit in (data.feature, data.neuron)
            if unit is not None
        }
    }


@data_page(router, "/runs/{run}/case-studies/{name}", "case_study.html", RUN_RESPONSES, _charts)
def read_case_study(session: SessionDep, run: RunSlug, name: CaseStudyName) -> CaseStudyView:
    """One case study: how specific and sensitive the run's best feature and its model's best neuron
    are to a concept proxy, their activation histograms split by the proxy, and pinning each."""
    return case_study_view(session, runs.get_run(session, run), name)
