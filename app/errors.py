"""Error pages: a missing run or feature, a bad query parameter, an unknown path.

Under /api/ the answer is JSON ({"detail": ...}, FastAPI's shape); elsewhere an HTML page that
says what was asked for and links back.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.queries import NotFoundError
from app.templating import render


def is_api(request: Request) -> bool:
    return request.url.path == "/api" or request.url.path.startswith("/api/")


def _back_link(request: Request) -> tuple[str, str]:
    """The nearest page above the one asked for: the run's page for a feature, else the front page."""
    parts = request.url.path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "runs":
        return f"/runs/{parts[1]}", "back to the run"
    return "/", "back to all runs"


def error_page(request: Request, status_code: int, title: str, messages: list[str]) -> Response:
    href, text = _back_link(request)
    context = {
        "title": title,
        "messages": messages,
        "asked": request.url.path,
        "back_href": href,
        "back_text": text,
    }
    return render(request, "error.html", context, status_code=status_code, twin=False)


async def handle_not_found(request: Request, exc: Exception) -> Response:
    if is_api(request):
        return JSONResponse({"detail": str(exc)}, status_code=404)
    return error_page(request, 404, "Not found", [str(exc)])


async def handle_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # nosec B101  # for mypy; registered for this type only
    if is_api(request):
        return await request_validation_exception_handler(request, exc)
    messages = [
        f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'request'}: {err.get('msg', 'invalid')}"
        for err in exc.errors()
    ]
    return error_page(request, 422, "Bad request", messages)


async def handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # nosec B101  # for mypy; registered for this type only
    if is_api(request) or exc.status_code not in (400, 404, 405, 413, 422):
        return await http_exception_handler(request, exc)
    detail = (
        "There is no page here." if exc.status_code == 404 and exc.detail == "Not Found" else str(exc.detail)
    )
    return error_page(
        request, exc.status_code, "Not found" if exc.status_code == 404 else "Bad request", [detail]
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NotFoundError, handle_not_found)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
