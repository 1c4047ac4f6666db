"""Static files (the app's CSS/JS and the vendored plotly.min.js) with caching headers and gzip.

plotly.min.js is 4.8 MB; gzipped once per process and kept in memory it travels as ~1.4 MB to
every browser that accepts gzip (all do), which is most of a first feature page's load time over a
real network. ETag / If-None-Match revalidation is StaticFiles' own, before any of this.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, Response
from starlette.types import Scope

COMPRESSIBLE = (".js", ".css", ".json", ".svg", ".txt", ".html")
GZIP_LEVEL = 6


@functools.lru_cache(maxsize=32)
def gzipped(path: Path, mtime_ns: int, size: int) -> bytes:
    """A file's gzipped bytes, once per (path, mtime, size): a changed file is compressed anew."""
    return gzip.compress(path.read_bytes(), GZIP_LEVEL, mtime=0)


def gzipped_file(path: Path) -> bytes:
    stat = path.stat()
    return gzipped(path, stat.st_mtime_ns, stat.st_size)


class CachedStaticFiles(StaticFiles):
    """Static files with a Cache-Control header, gzipped for clients that accept it; `only`
    restricts them to a list."""

    def __init__(self, *, directory: Path, max_age: int, only: frozenset[str] | None = None) -> None:
        super().__init__(directory=directory)
        self.cache_control = f"public, max-age={max_age}"
        self.only = only  # the files served (paths relative to `directory`); None: all of them

    async def get_response(self, path: str, scope: Scope) -> Response:
        if self.only is not None and path not in self.only:
            raise HTTPException(status_code=404)
        response = await super().get_response(path, scope)
        if response.status_code != 200:
            return response
        response.headers["cache-control"] = self.cache_control
        if not isinstance(response, FileResponse) or not str(response.path).endswith(COMPRESSIBLE):
            return response
        response.headers["vary"] = "Accept-Encoding"
        if "gzip" not in Headers(scope=scope).get("accept-encoding", "").lower():
            return response
        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        headers["content-encoding"] = "gzip"
        return Response(gzipped_file(Path(response.path)), headers=headers)
