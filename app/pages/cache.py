"""Rendered pages of complete runs: kept in memory, read from the database's stored pages, and
revalidated by browsers with ETags.

A complete run never changes: re-analysing a model writes a new run (new id) and swaps the slug
over in one transaction (`trainer.store.database.publish_run`). So a page of a complete run is the same
bytes for as long as its slug names the same (run id, completed_at), and each request checks that
with one read of the small `runs` table (a few rows) before answering from the cache, so a slug
re-pointed at a new run is never answered from the old one's entry.

What is cached, keyed by (version, path, raw query string), only GET answers with status 200:
- a run's page and its features' pages (HTML and /api/ JSON): version = that run's id and
  completed_at; only while the run is complete;
- token search (HTML and JSON): version = every complete run's (id, completed_at);
- the front page and /api/runs: version = every run's state; only when no run is unfinished.
Live inference, /-/ pages, static files and errors are not.

Where an answer comes from, in order (`x-cache` says which): `hit`, this worker's memory;
`store`, the pages `monosemantic prerender` rendered into the database (`StoredPage`: a run's
page and its features' pages without a query string, used only when they were rendered by this
very code, `app_version`); `miss`, rendered now. Bodies are kept gzip-compressed (a feature page
shrinks ~5x) and sent so to clients that accept gzip.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import handle_pool_timeout
from app.pages.templating import STATIC_DIR, TEMPLATES_DIR
from trainer.store.schema import Run, StoredPage

# Browsers and proxies may keep a page but must ask (If-None-Match → 304) before reusing it,
# since a slug can be re-pointed at a newer run.
CACHE_CONTROL = b"public, no-cache"
GZIP_LEVEL = 1  # 0.37 ms for an 80 kB feature page, 6.2x smaller; level 6: 0.86 ms for 20% less
RunRow = tuple[int, str, str, str]  # id, slug, status, completed_at (as text)


APP_DIR = Path(__file__).resolve().parents[1]  # all of app/, not only app/pages/


def code_version(*directories: Path) -> str:
    """A digest of the app's code, templates and static files, so a deploy that changes what a
    page shows changes ETags, stored pages' validity and the static files' URLs."""
    digest = hashlib.sha1(usedforsecurity=False)
    seen: set[Path] = set()  # a file read once: in a wheel, templates/ and static/ are inside app/
    for directory in directories:
        for path in sorted(directory.resolve().rglob("*")):
            if path.is_file() and path.suffix in (".py", ".html", ".css", ".js") and path not in seen:
                seen.add(path)
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def app_version() -> str:
    """This app's code version: in every ETag and static URL, and what a stored page must have
    been rendered by."""
    return code_version(TEMPLATES_DIR, STATIC_DIR, APP_DIR)  # the same digest installed or editable


_RUNS_QUERY = select(Run.id, Run.slug, Run.status, Run.completed_at)
_STORED_PAGE_QUERY = select(StoredPage.content_type, StoredPage.body_gzip).where(
    StoredPage.run_id == bindparam("run_id"),
    StoredPage.path == bindparam("path"),
    StoredPage.app_version == bindparam("app_version"),
)


def read_runs(engine: Engine) -> list[RunRow]:
    """Every run's id, slug, status and completed_at: the whole cache-validity check (one query)."""
    with engine.connect() as conn:
        rows = conn.execute(_RUNS_QUERY).all()
    return [(run_id, slug, status, str(completed_at)) for run_id, slug, status, completed_at in rows]


def _digest(rows: Sequence[RunRow]) -> str:
    return hashlib.sha1(repr(sorted(rows)).encode(), usedforsecurity=False).hexdigest()[:12]


@dataclass(frozen=True)
class PageVersion:
    tag: str  # the data's version: in the ETag and the cache key
    run_id: int | None = None  # the run a run-scoped page shows (its stored pages live under it)


def page_version(path: str, runs: Sequence[RunRow]) -> PageVersion | None:
    """The version of the data behind `path`, or None if its answer must not be cached."""
    parts = path.split("/")[1:]  # "/api/runs/x/features/3" -> ["api", "runs", "x", "features", "3"]
    if parts and parts[0] == "api":
        parts = parts[1:]
        if parts == ["runs"]:
            parts = [""]  # /api/runs is the front page's twin
    if parts in ([""], ["search"]):
        if parts == [""] and any(status != "complete" for _, _, status, _ in runs):
            return None  # unfinished runs show progress that changes
        scope = runs if parts == [""] else [r for r in runs if r[2] == "complete"]
        return PageVersion(f"{parts[0] or 'index'}-{_digest(scope)}")
    if len(parts) in (2, 4) and parts[0] == "runs" and (len(parts) == 2 or parts[2] == "features"):
        for run_id, slug, status, completed_at in runs:
            if slug == parts[1]:
                if status != "complete":
                    return None
                stamp = hashlib.sha1(completed_at.encode(), usedforsecurity=False).hexdigest()[:8]
                return PageVersion(f"run{run_id}-{stamp}", run_id)
    return None


@dataclass(frozen=True)
class CachedPage:
    headers: list[tuple[bytes, bytes]]  # the app's own, minus content-length and -encoding
    gzipped: bytes

    @property
    def size(self) -> int:
        return len(self.gzipped) + sum(len(k) + len(v) for k, v in self.headers)


def read_stored_page(engine: Engine, run_id: int, path: str, version: str) -> CachedPage | None:
    """The page `monosemantic prerender` stored for `path` of run `run_id` with this app version."""
    with engine.connect() as conn:
        row = conn.execute(
            _STORED_PAGE_QUERY, {"run_id": run_id, "path": path, "app_version": version}
        ).one_or_none()
    if row is None:
        return None
    content_type, body = row
    return CachedPage([(b"content-type", content_type.encode())], body)


class PageLRU:
    """A least-recently-used map bounded by the bytes it holds; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._pages: OrderedDict[tuple[str, str, bytes], CachedPage] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pages)

    def get(self, key: tuple[str, str, bytes]) -> CachedPage | None:
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
            return page

    def put(self, key: tuple[str, str, bytes], page: CachedPage) -> None:
        if page.size > self.max_bytes:
            return
        with self._lock:
            old = self._pages.pop(key, None)
            if old is not None:
                self.bytes -= old.size
            self._pages[key] = page
            self.bytes += page.size
            while self.bytes > self.max_bytes:
                _, evicted = self._pages.popitem(last=False)
                self.bytes -= evicted.size


def _accepts_gzip(headers: Headers) -> bool:
    return "gzip" in headers.get("accept-encoding", "").lower()


def _etag_matches(headers: Headers, etag: bytes) -> bool:
    wanted = headers.get("if-none-match")
    if not wanted:
        return False
    tags = {t.strip().removeprefix("W/") for t in wanted.split(",")}
    return "*" in tags or etag.decode() in tags


class ResponseCacheMiddleware:
    """Answer cacheable GETs from a `PageLRU`, with ETag/304; fill it from the app on a miss."""

    def __init__(self, app: ASGIApp, max_bytes: int, version: str) -> None:
        self.app = app
        self.pages = PageLRU(max_bytes)
        self.version = version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or self.pages.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        # The front page, search and anything under a run (inference excluded by page_version).
        if not (path == "/" or path.startswith(("/runs/", "/api/runs", "/search", "/api/search"))):
            await self.app(scope, receive, send)
            return
        engine: Engine = scope["app"].state.engine
        try:  # in the thread pool: a wait for a pooled connection must not block the event loop
            runs = await run_in_threadpool(read_runs, engine)
        except PoolTimeoutError as exc:
            response = await handle_pool_timeout(Request(scope), exc)
            await response(scope, receive, send)
            return
        data_version = page_version(path, runs)
        if data_version is None:
            await self.app(scope, receive, send)
            return
        etag = f'"{self.version}-{data_version.tag}"'.encode()
        request_headers = Headers(scope=scope)
        validators = [(b"etag", etag), (b"cache-control", CACHE_CONTROL), (b"vary", b"Accept-Encoding")]
        if _etag_matches(request_headers, etag):
            await send({"type": "http.response.start", "status": 304, "headers": validators})
            await send({"type": "http.response.body", "body": b""})
            return

        key = (data_version.tag, path, scope["query_string"])
        page, source = self.pages.get(key), b"hit"
        if page is None and data_version.run_id is not None and not scope["query_string"]:
            if scope["app"].state.stored_pages:
                try:
                    page = await run_in_threadpool(
                        read_stored_page, engine, data_version.run_id, path, self.version
                    )
                except PoolTimeoutError:
                    page = None  # render it instead (which waits for a connection in its turn)
                source = b"store"
                if page is not None:
                    self.pages.put(key, page)
        if page is None:
            page = await self._render(scope, receive, send, [*validators, (b"x-cache", b"miss")])
            if page is None:
                return  # not a 200: already sent as the app answered it
            self.pages.put(key, page)
            return
        await self._send_page(page, send, [*validators, (b"x-cache", source)], _accepts_gzip(request_headers))

    async def _render(
        self, scope: Scope, receive: Receive, send: Send, validators: list[tuple[bytes, bytes]]
    ) -> CachedPage | None:
        """Run the app; a 200 is collected, stored and sent with validators, anything else passed on."""
        start: dict[str, Any] = {}
        chunks: list[bytes] = []
        passing_through = False

        async def collect(message: Message) -> None:
            nonlocal passing_through
            if message["type"] == "http.response.start":
                if message["status"] != 200:
                    passing_through = True
                    await send(message)
                else:
                    start.update(message)
            elif passing_through:
                await send(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, collect)
        if passing_through or not start:
            return None
        headers = [
            (k, v)
            for k, v in start.get("headers", [])
            if k.lower() not in (b"content-length", b"content-encoding", b"etag", b"cache-control", b"vary")
        ]
        page = CachedPage(headers, gzip.compress(b"".join(chunks), GZIP_LEVEL, mtime=0))
        await self._send_page(page, send, validators, _accepts_gzip(Headers(scope=scope)), b"".join(chunks))
        return page

    @staticmethod
    async def _send_page(
        page: CachedPage,
        send: Send,
        validators: list[tuple[bytes, bytes]],
        gzip_ok: bool,
        plain: bytes | None = None,
    ) -> None:
        if gzip_ok:
            body, encoding = page.gzipped, [(b"content-encoding", b"gzip")]
        else:
            body, encoding = plain if plain is not None else zlib.decompress(page.gzipped, 31), []
        headers = [*page.headers, *encoding, (b"content-length", str(len(body)).encode()), *validators]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
