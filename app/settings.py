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
