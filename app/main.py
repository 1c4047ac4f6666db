"""The web app: `create_app()` builds it (run with `uvicorn app.main:create_app --factory`).

The engine is made here, read-only, and the database's schema version checked before the first
request; nothing is built at import time, so tests can make apps on their own databases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import plotly
from fastapi import FastAPI
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.errors import install_error_handlers
from app.head import HeadMiddleware
from app.live.inference import preload, preload_sources
from app.live.pool import LiveExecutor
from app.pages.cache import ResponseCacheMiddleware, app_version
from app.pages.static import CachedStaticFiles, gzipped_file
from app.pages.templating import STATIC_DIR, build_templates
from app.queries.runs import VOCAB_CACHE_RUNS, load_tokens
from app.routes import (
    case_studies,
    families,
    features,
    findings,
    health,
    inference,
    interpretability,
    runs,
    search,
    steer,
)
from app.security import SecurityHeadersMiddleware
from app.settings import Settings
from trainer.store.schema import DatabaseError, Run, check_schema_version, make_engine, read_schema_version

PLOTLY_DIR = Path(plotly.__file__).resolve().parent / "package_data"
VENDOR_FILES = frozenset({"plotly.min.js"})


def warm_up(templates: Jinja2Templates, engine: Engine) -> None:
    """Do at startup what the first requests would otherwise all queue behind: compile every
    template, load the vocabularies (every page's token texts) of the complete runs and gzip
    the JavaScript every feature page loads."""
    gzipped_file(PLOTLY_DIR / "plotly.min.js")
    for name in templates.env.list_templates(extensions=["html"]):
        templates.env.get_template(name)
    with Session(engine) as session:
        for run in session.scalars(select(Run).where(Run.status == "complete").limit(VOCAB_CACHE_RUNS)):
            load_tokens(session, run, [0])


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for `settings` (default: from the environment). Raises DatabaseError at startup
    if the database cannot be opened or was written by a newer schema."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings: Settings = app.state.settings  # read at startup: a test may swap it before
        engine = make_engine(
            settings.database_url,
            read_only=True,
            pool_size=settings.db_pool_size,
            pool_timeout=settings.db_pool_timeout,
        )
        try:
            check_schema_version(engine)
            app.state.schema_version = read_schema_version(engine)
        except DatabaseError as exc:
            engine.dispose()
            raise DatabaseError(f"{exc} (set DATABASE_URL to the trainer's database)") from exc
        app.state.engine = engine
        # Stored pages need schema 2; an older database (not migrated: the app never writes) has none.
        app.state.stored_pages = settings.stored_pages and (app.state.schema_version or 0) >= 2
        if app.state.schema_version is not None:
            warm_up(app.state.templates, engine)
        app.state.live = LiveExecutor(
            processes=settings.live_processes,
            max_jobs=settings.live_max_jobs,
            retry_after=settings.live_retry_after,
            torch_threads=settings.live_torch_threads,
            nice=settings.live_nice,
            timeout=settings.live_timeout,
        )
        if settings.live_prestart and app.state.schema_version is not None:
            with Session(engine) as session:
                app.state.live.prestart(preload, preload_sources(session))
        yield
        app.state.live.shutdown()
        engine.dispose()

    app = FastAPI(
        title="monosemantic",
        summary="Browse the features of sparse autoencoders trained on a one-layer transformer.",
        version="0.1.0",
        lifespan=lifespan,
        # Swagger UI and ReDoc load scripts from a CDN, which the CSP forbids; /openapi.json stays.
        docs_url=None,
        redoc_url=None,
        # Starlette's own slash redirect builds its Location from the Host header: see `slash_redirect`.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.app_version = app_version()
    app.state.templates = build_templates(app.state.app_version)
    app.state.schema_version = None
    app.state.stored_pages = False
    for module in (
        runs,
        features,
        findings,
        case_studies,
        families,
        interpretability,
        search,
        inference,
        steer,
        health,
    ):
        app.include_router(module.router)
    # The vendor mount comes first: Starlette matches mounts in order. Of plotly's package_data
    # (datasets, a 5 MB widget bundle...) it serves only the bundle the pages load.
    app.mount(
        "/static/vendor",
        CachedStaticFiles(directory=PLOTLY_DIR, max_age=settings.static_max_age, only=VENDOR_FILES),
        name="vendor",
    )
    app.mount(
        "/static", CachedStaticFiles(directory=STATIC_DIR, max_age=settings.static_max_age), name="static"
    )
    install_error_handlers(app)
    # Added first, so it runs inside the security headers (they are added to cached pages too).
    app.add_middleware(
        ResponseCacheMiddleware,
        max_bytes=settings.response_cache_mb * 2**20,
        version=app.state.app_version,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(HeadMiddleware)  # outermost: the cache and the routes see a GET
    return app
