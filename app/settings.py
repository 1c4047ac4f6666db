"""The app's settings, from the environment: one pydantic-settings class, built by `create_app`."""

from __future__ import annotations

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
