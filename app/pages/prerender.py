"""`monosemantic prerender`: render every page of complete runs once, into the database.

A complete run never changes, so its page and each of its features' pages (HTML and JSON twin)
can be rendered ahead of time, like a static site, and served by one indexed read instead of
~10 ms of rendering (`app.pages.cache` serves them, `x-cache: store`). The pages are rendered by the
real app, in-process, so they are the very bytes a live render sends; each is stored with the
app's code version and used only by that same code. Already stored pages are skipped, so an
interrupted prerender continues where it stopped; pages are written in small transactions, each
one complete page or none.
"""

from __future__ import annotations

import asyncio
import gzip
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from tqdm import tqdm

from app import links
from app.pages.cache import app_version
from trainer.store.schema import (
    Run,
    StoredPage,
    ensure_schema,
    make_engine,
    read_schema_version,
    reclaim_free_space,
)

# Offline work, served many times: a stronger level than the live cache's (level 1) is worth it.
STORED_GZIP_LEVEL = 6
CHUNK_PAGES = 128  # pages per task handed to a worker process (and per write transaction)
# Added to the render workers' niceness (bench/bench_app.py --while-writing measures the server).
RENDER_NICENESS = 10

PageJob = tuple[int, str]  # (run id, path)
RenderedPage = tuple[int, str, str, bytes]  # (run id, path, content type, gzipped body)


class PrerenderError(RuntimeError):
    """A page could not be rendered or stored; the message names it."""


@dataclass(frozen=True)
class PrerenderResult:
    runs: int
    rendered: int  # pages rendered and stored now
    skipped: int  # pages already stored by this app version
    stored_bytes: int  # gzipped bytes written now
    seconds: float

    def summary(self) -> str:
        return (
            f"prerender: {self.rendered} pages of {self.runs} run(s) stored "
            f"({self.stored_bytes / 1e6:.1f} MB gzipped), {self.skipped} already stored, "
            f"in {self.seconds:.1f}s"
        )


def run_page_paths(slug: str, n_features: int) -> list[str]:
    """The pages of one run that are stored: the run page and every feature page, each with its
    JSON twin (views with a query string, such as a sorted feature list, render live)."""
    paths = [links.run_url(slug), links.run_url(slug, api=True)]
    for index in range(n_features):
        paths += [links.feature_url(slug, index), links.feature_url(slug, index, api=True)]
    return paths


# ----------------------------------------------------------------------------- rendering


class PageRenderer:
    """The app, started once (its lifespan opened), rendering paths live: no caches, no stored pages."""

    def __init__(self, db_url: str) -> None:
        from app.main import create_app
        from app.settings import Settings

        self.app = create_app(Settings(database_url=db_url, response_cache_mb=0, stored_pages=False))
        self.loop = asyncio.new_event_loop()
        self._lifespan: AbstractAsyncContextManager[Any] = self.app.router.lifespan_context(self.app)
        self.loop.run_until_complete(self._lifespan.__aenter__())
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://prerender"
        )

    async def _render(self, jobs: Sequence[PageJob]) -> list[RenderedPage]:
        pages = []
        for run_id, path in jobs:
            response = await self.client.get(path, headers={"accept-encoding": "identity"})
            if response.status_code != 200:
                raise PrerenderError(f"{path} answered {response.status_code}: {response.text[:200]}")
            body = gzip.compress(response.content, STORED_GZIP_LEVEL, mtime=0)
            pages.append((run_id, path, response.headers["content-type"], body))
        return pages

    def render(self, jobs: Sequence[PageJob]) -> list[RenderedPage]:
        return self.loop.run_until_complete(self._render(jobs))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self._lifespan.__aexit__(None, None, None))
        self.loop.close()


_worker_renderer: PageRenderer | None = None


def _yield_cpu() -> None:
    """Render at a lower CPU priority: offline work on a database that may be served meanwhile,
    whose readers must not wait behind it (alone on the machine it is as fast as before)."""
    if hasattr(os, "nice"):
        os.nice(RENDER_NICENESS)


def _start_worker(db_url: str) -> None:
    global _worker_renderer
    _yield_cpu()
    _worker_renderer = PageRenderer(db_url)


def _render_in_worker(jobs: Sequence[PageJob]) -> list[RenderedPage]:
    assert _worker_renderer is not None, "worker process not initialised"  # nosec B101  # for mypy; set by the pool initializer
    return _worker_renderer.render(jobs)


def _rendered_chunks(
    db_url: str, chunks: list[list[PageJob]], processes: int
) -> Iterator[list[RenderedPage]]:
    """Each chunk's pages, in order: in this process, or spread over worker processes."""
    if processes <= 1:
        renderer = PageRenderer(db_url)
        try:
            for chunk in chunks:
                yield renderer.render(chunk)
        finally:
            renderer.close()
        return
    # spawn, not fork: the caller may hold torch's thread pools and open database connections.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        processes, mp_context=context, initializer=_start_worker, initargs=(db_url,)
    ) as pool:
        yield from pool.map(_render_in_worker, chunks)


# ----------------------------------------------------------------------------- storing


def _store(engine: Engine, pages: Sequence[RenderedPage], version: str) -> int:
    """Replace these pages in one transaction; the gzipped bytes written."""
    by_run: dict[int, list[RenderedPage]] = {}
    for page in pages:
        by_run.setdefault(page[0], []).append(page)
    with engine.begin() as conn:
        for run_id, run_pages in by_run.items():
            conn.execute(
                delete(StoredPage).where(
                    StoredPage.run_id == run_id, StoredPage.path.in_([p[1] for p in run_pages])
                )
            )
            conn.execute(
                insert(StoredPage),
                [
                    {
                        "run_id": run_id,
                        "path": path,
                        "app_version": version,
                        "content_type": ctype,
                        "body_gzip": body,
                    }
                    for _, path, ctype, body in run_pages
                ],
            )
    return sum(len(p[3]) for p in pages)


def _jobs(
    engine: Engine, slugs: Sequence[str] | None, version: str, force: bool
) -> tuple[int, list[PageJob], int]:
    """(runs, pages still to render, pages already stored by this version)."""
    with engine.connect() as conn:
        query = select(Run.id, Run.slug, Run.n_features, Run.status)
        if slugs:
            query = query.where(Run.slug.in_(list(slugs)))
        runs = conn.execute(query.order_by(Run.slug)).all()
        found = {slug: status for _, slug, _, status in runs}
        for slug in slugs or []:
            if slug not in found:
                raise PrerenderError(f"no run {slug!r} in the database")
            if found[slug] != "complete":
                raise PrerenderError(
                    f"run {slug!r} is {found[slug]}, not complete: only complete runs are stored"
                )
        done = set()
        if not force:
            done = set(
                conn.execute(
                    select(StoredPage.run_id, StoredPage.path).where(StoredPage.app_version == version)
                )
            )
    complete = [(run_id, slug, n) for run_id, slug, n, status in runs if status == "complete"]
    jobs = [(run_id, path) for run_id, slug, n in complete for path in run_page_paths(slug, n)]
    todo = [job for job in jobs if job not in done]
    return len(complete), todo, len(jobs) - len(todo)


def prerender(
    db_url: str,
    slugs: Sequence[str] | None = None,
    processes: int = 1,
    force: bool = False,
    progress: bool = True,
) -> PrerenderResult:
    """Render and store the pages of the complete runs `slugs` (default: every complete run)
    that this app version has not stored yet (`force`: all of them again)."""
    started = time.perf_counter()
    engine = make_engine(db_url)
    try:
        ensure_schema(engine)  # an older database gains the stored_pages table
        version = app_version()
        n_runs, todo, skipped = _jobs(engine, slugs, version, force)
        chunks = [todo[i : i + CHUNK_PAGES] for i in range(0, len(todo), CHUNK_PAGES)]
        written = 0
        with tqdm(total=len(todo), unit="page", desc="prerender", disable=not progress or not todo) as bar:
            for pages in _rendered_chunks(db_url, chunks, max(1, min(processes, len(chunks)))):
                written += _store(engine, pages, version)
                bar.update(len(pages))
        if todo:
            reclaim_free_space(engine)  # pages of an older app version were replaced
    finally:
        engine.dispose()
    return PrerenderResult(n_runs, len(todo), skipped, written, time.perf_counter() - started)


def runs_without_pages(engine: Engine) -> list[str]:
    """Slugs of complete runs with no page stored by this app version (their pages render live)."""
    version = app_version()
    with engine.connect() as conn:
        runs = conn.execute(select(Run.id, Run.slug).where(Run.status == "complete")).all()
        if (read_schema_version(engine) or 0) < 2:
            return sorted(slug for _, slug in runs)  # written before pages were stored
        stored = set(
            conn.scalars(select(StoredPage.run_id).where(StoredPage.app_version == version).distinct())
        )
    return sorted(slug for run_id, slug in runs if run_id not in stored)
