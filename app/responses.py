"""The error answers each API operation documents in OpenAPI, beside FastAPI's own 422."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    """An error's JSON body: what went wrong, in a sentence."""

    detail: str


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "No such run or feature."}
}
BUSY: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorDetail,
        "description": "The server is busy (every live slot or database connection is taken); "
        "the Retry-After header says after how many seconds to try again.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    }
}
READ_RESPONSES = BUSY  # every database read may find the connection pool exhausted
RUN_RESPONSES = NOT_FOUND | BUSY
LIVE_RESPONSES: dict[int | str, dict[str, Any]] = NOT_FOUND | {
    503: {
        **BUSY[503],
        "description": "The server is busy (every live slot or database connection is taken; the "
        "Retry-After header says after how many seconds to try again), or the run's model, "
        "tokenizer or SAE folder is missing from disk (the detail names it; no Retry-After).",
    }
}
