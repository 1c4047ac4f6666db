"""The app's settings, from the environment: one pydantic-settings class, built by `create_app`."""

from __future__ import annotations

import os

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """DATABASE_URL (shared with the trainer) and MONOSEMANTIC_* variables."""

    model_config = SettingsConfigDict(env_prefix="MONOSEMANTIC_", extra="ignore", populate_by_name=True)

    database_url: str = Field(
        default="sqlite:///runs/demo/monosemantic.db",
        validation_alias=AliasChoices("DATABASE_URL", "MONOSEMANTIC_DATABASE_URL", "database_url"),
    )
    # Seconds browsers may cache /static files (plotly.min.js is 4 MB).
    static_max_age: int = 3600
    # Memory per worker process for rendered pages of complete runs (gzipped; 0 turns it off).
    response_cache_mb: int = Field(default=64, ge=0)
    # Serve the pages `monosemantic prerender` stored in the database (when rendered by this code).
    stored_pages: bool = True
    # `monosemantic serve` worker processes: each holds its own connections and page cache.
    workers: int = Field(default_factory=lambda: min(2, os.cpu_count() or 1), ge=1)

    # Database connections per worker process (the pool never grows past it) and how long a
    # request waits for one before it is answered 503. Handlers query in the thread pool (40
    # threads, anyio's default) and hold a connection for a few milliseconds, never while a model
    # runs; 16 keeps PostgreSQL at 32 connections for 2 workers, well under its default 100.
    db_pool_size: int = Field(default=16, ge=1, le=256)
    db_pool_timeout: float = Field(default=10.0, gt=0, le=300)
    # Live inference and steering, per worker process (app/live/pool.py): child processes running the
    # model, one job at a time each, at `live_nice` lower CPU priority than the pages and on
    # `live_torch_threads` torch threads (0: torch's default, one per core); jobs admitted at once
    # (running or waiting; one more gets 503 with Retry-After at once); the Retry-After seconds;
    # and the seconds a job may run before its process is killed (503, and a new process).
    live_processes: int = Field(default=1, ge=1, le=64)
    live_max_jobs: int = Field(default=4, ge=1, le=1024)
    live_retry_after: int = Field(default=2, ge=1, le=3600)
    live_torch_threads: int = Field(default=1, ge=0, le=256)
    live_nice: int = Field(default=10, ge=0, le=19)
    live_timeout: float = Field(default=60.0, gt=0, le=3600)
    # Start the live processes when a worker starts and load the models of the newest complete
    # runs in them (those on this machine), so the first steer pays for neither; off: on first use.
    live_prestart: bool = True
