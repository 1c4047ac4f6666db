"""Request dependencies, as `Annotated` types the route handlers declare."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.settings import Settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session on the app's read-only engine, closed after the response.

    Async on purpose: handlers run their (short, indexed) SQLite queries on the event loop's
    thread, which keeps one connection per process and no thread hand-offs per request.
    """
    with Session(request.app.state.engine) as session:
        yield session


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
