"""A data page and its JSON twin from one handler: the twin answers the handler's model at
/api{path}, the page renders that same model at {path} (Datasette's "the URLs are the API")."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import Response

from app import links
from app.pages.templating import render

Handler = TypeVar("Handler", bound=Callable[..., Any])


def data_page(
    router: APIRouter,
    path: str,
    template: str,
    responses: dict[int | str, dict[str, Any]],
    extras: Callable[[Any], Mapping[str, Any]] | None = None,
) -> Callable[[Handler], Handler]:
    """Register the decorated `read_x` handler as GET /api{path} (its return annotation the
    response model, its docstring the OpenAPI text) and, with the same parameters, a page `show_x`
    at GET {path}, outside OpenAPI, rendering `template` with {"data": answer, **extras(answer)}."""

    def register(read: Handler) -> Handler:
        signature = inspect.signature(read, eval_str=True)  # the route module's names, resolved there
        if "request" in signature.parameters:
            raise TypeError(f"{read.__name__}: a data page's handler takes no `request` of its own")
        twin = router.get(links.API + path, response_model=signature.return_annotation, responses=responses)
        twin(read)

        def show(request: Request, **params: Any) -> Response:
            data = read(**params)
            return render(request, template, {"data": data, **(extras(data) if extras else {})})

        # FastAPI reads a handler's parameters from its signature: the page takes the handler's.
        request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)
        show.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[request, *signature.parameters.values()], return_annotation=Response
        )
        show.__name__ = show.__qualname__ = "show_" + read.__name__.removeprefix("read_")
        show.__module__ = read.__module__
        router.get(path, include_in_schema=False)(show)
        return read

    return register
