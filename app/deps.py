"""Request dependencies, as `Annotated` types the route handlers declare."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.live.pool import LiveExecutor
from app.settings import Settings


def get_session(request: Request) -> Iterator[Session]:
    """A session on the app's read-only engine, closed after the response.

    A plain generator, so FastAPI runs it (and the `def` handlers using it) in the thread pool:
    a slow query or a wait for a pooled connection never blocks the event loop, which keeps
    answering /-/health, static files and cached pages meanwhile.
    """
    with Session(request.app.state.engine) as session:
        yield session


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_live(request: Request) -> LiveExecutor:
    live: LiveExecutor = request.app.state.live
    return live


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SessionDep = Annotated[Session, Depends(get_session)]
EngineDep = Annotated[Engine, Depends(get_engine)]
LiveDep = Annotated[LiveExecutor, Depends(get_live)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
