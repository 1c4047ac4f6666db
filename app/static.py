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
    """Static files with a Cache-Control header, gzipped for clients that accept it."""

    def __init__(self, *, directory: Path, max_age: int) -> None:
        super().__init__(directory=directory)
        self.cache_control = f"public, max-age={max_age}"

    async def get_response(self, path: str, scope: Scope) -> Response:
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
