"""Error pages: a missing run or feature, a bad query parameter, an unknown path, a busy server,
a run's model folder gone from disk (503, naming it), a bug.

Under /api/ the answer is JSON ({"detail": ...}, FastAPI's shape); elsewhere an HTML page that
says what was asked for and links back. A 405 keeps its Allow header; a 503 (every live slot or
database connection taken, or the live model's process died) carries Retry-After; a 500 gets the
security headers itself, as Starlette answers it outside every middleware.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match

from app.live.inference import ModelMissing
from app.live.pool import LiveUnavailable
from app.pages.templating import render
from app.queries.runs import NotFoundError
from app.security import HEADERS as SECURITY_HEADERS

log = logging.getLogger(__name__)
TITLES = {404: "Not found", 405: "Method not allowed", 503: "Busy", 500: "Something went wrong"}


def is_api(request: Request) -> bool:
    return request.url.path == "/api" or request.url.path.startswith("/api/")


def _back_link(request: Request) -> tuple[str, str]:
    """The nearest page above the one asked for: the run's page for a feature, else the front page."""
    parts = request.url.path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "runs":
        return f"/runs/{parts[1]}", "back to the run"
    return "/", "back to all runs"


def error_page(
    request: Request,
    status_code: int,
    title: str,
    messages: list[str],
    headers: dict[str, str] | None = None,
) -> Response:
    href, text = _back_link(request)
    context = {
        "title": title,
        "messages": messages,
        "asked": request.url.path,
        "back_href": href,
        "back_text": text,
    }
    response = render(request, "error.html", context, status_code=status_code, twin=False)
    response.headers.update(headers or {})
    return response


def error(
    request: Request, status_code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The error answer: JSON {"detail": message} under /api/, else the HTML error page."""
    if is_api(request):
        return JSONResponse({"detail": message}, status_code=status_code, headers=headers)
    return error_page(request, status_code, TITLES.get(status_code, "Bad request"), [message], headers)


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


def slash_redirect(request: Request) -> Response | None:
    """A redirect from `/path/` to `/path` when that is an HTML page. Its Location is the path alone
    (with the app's root path): built from the Host header it would send visitors anywhere."""
    path = request.scope["path"]
    if request.method not in ("GET", "HEAD") or path == "/" or not path.endswith("/") or is_api(request):
        return None  # the JSON API has one URL per resource (and documents no 3xx)
    target = path.rstrip("/")
    if not target or target.startswith("//"):  # "//host" would be a protocol-relative URL
        return None
    scope = {**request.scope, "path": target}
    if not any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
        return None
    query = request.scope.get("query_string", b"").decode("latin-1")
    location = request.scope.get("root_path", "") + target + (f"?{query}" if query else "")
    return RedirectResponse(location, status_code=308)


def _allow(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """The 405's Allow header, with HEAD wherever GET is (`HeadMiddleware` answers it)."""
    if not headers or "Allow" not in headers:
        return dict(headers) if headers else None
    methods = [m.strip() for m in headers["Allow"].split(",")]
    if "GET" in methods and "HEAD" not in methods:
        methods.append("HEAD")
    return {**headers, "Allow": ", ".join(sorted(methods))}


async def handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # nosec B101  # for mypy; registered for this type only
    if exc.status_code == 404 and exc.detail == "Not Found":
        redirect = slash_redirect(request)
        if redirect is not None:
            return redirect
    headers = _allow(exc.headers)
    if is_api(request) or exc.status_code not in (400, 404, 405, 413, 422):
        return await http_exception_handler(
            request, StarletteHTTPException(exc.status_code, exc.detail, headers)
        )
    detail = (
        "There is no page here." if exc.status_code == 404 and exc.detail == "Not Found" else str(exc.detail)
    )
    return error_page(request, exc.status_code, TITLES.get(exc.status_code, "Bad request"), [detail], headers)


async def handle_busy(request: Request, exc: Exception) -> Response:
    """Every live slot taken, or the model process died or overran its time: 503, Retry-After."""
    assert isinstance(exc, LiveUnavailable)  # nosec B101  # registered for this type only
    return error(request, 503, str(exc), {"Retry-After": str(exc.retry_after)})


async def handle_model_missing(request: Request, exc: Exception) -> Response:
    """A live page of a run whose model, tokenizer or SAE folder is gone: 503 naming the path
    (no Retry-After: it comes back when someone restores the folder, not by waiting)."""
    if is_api(request):
        return JSONResponse({"detail": str(exc)}, status_code=503)
    return error_page(request, 503, "Model unavailable", [str(exc)])


async def handle_pool_timeout(request: Request, exc: Exception) -> Response:
    """Every database connection of this worker stayed taken for `db_pool_timeout` seconds."""
    retry_after = str(request.app.state.settings.live_retry_after)
    message = "The server is busy (no database connection was free); try again in a few seconds."
    return error(request, 503, message, {"Retry-After": retry_after})


async def handle_server_error(request: Request, exc: Exception) -> Response:
    """A bug: the app's own error page (or JSON), with the security headers. Starlette logs the
    traceback; the page does not show it."""
    message = "The server failed to answer this request; the error was logged."
    try:
        response = error(request, 500, message)
    except Exception:  # the error page itself failed: plain text, still with the headers
        log.exception("the error page failed")
        response = Response(message, status_code=500, media_type="text/plain")
    for name, value in SECURITY_HEADERS:
        response.headers[name.decode()] = value.decode()
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NotFoundError, handle_not_found)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    app.add_exception_handler(LiveUnavailable, handle_busy)
    app.add_exception_handler(ModelMissing, handle_model_missing)
    app.add_exception_handler(PoolTimeoutError, handle_pool_timeout)
    app.add_exception_handler(Exception, handle_server_error)
