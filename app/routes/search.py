"""Token search: which features and neurons fire most on a token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from app.deps import SessionDep
from app.models import SearchMode, SearchResult
from app.pages.templating import render
from app.queries import token_search
from app.responses import RUN_RESPONSES

router = APIRouter(tags=["search"])

SEARCH_MAX_CHARS = 100

TokenQuery = Annotated[
    str | None,
    Query(max_length=SEARCH_MAX_CHARS, description="A token's exact text, e.g. ' the' (leading space)."),
]
ModeQuery = Annotated[
    SearchMode, Query(description="exact: the token itself; prefix: every token starting so.")
]
RunQuery = Annotated[
    str | None, Query(max_length=200, description="One run's slug; default all complete runs.")
]
LimitQuery = Annotated[int, Query(ge=1, le=500)]


@router.get("/api/search", response_model=SearchResult, responses=RUN_RESPONSES)
def search_token(
    session: SessionDep,
    token: TokenQuery = None,
    mode: ModeQuery = "exact",
    run: RunQuery = None,
    limit: LimitQuery = token_search.SEARCH_HITS_DEFAULT,
) -> SearchResult:
    """Features and neurons that fire most on the tokens matching `token`, strongest first."""
    return token_search.search(session, token, mode, run or None, limit)


@router.get("/search", include_in_schema=False)
def show_search(
    request: Request,
    session: SessionDep,
    token: TokenQuery = None,
    mode: ModeQuery = "exact",
    run: RunQuery = None,
    limit: LimitQuery = token_search.SEARCH_HITS_DEFAULT,
) -> Response:
    data = token_search.search(session, token, mode, run or None, limit)
    return render(request, "search.html", {"data": data, "runs": token_search.complete_run_slugs(session)})
