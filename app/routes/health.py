"""Internal pages under /-/ (never collide with data names)."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request

from app.models import Health, LivePoolOut

router = APIRouter(prefix="/-", tags=["internal"])


@router.get("/health", response_model=Health)
async def read_health(request: Request) -> Health:
    """Liveness: the app is up and its database schema was checked at startup; with this worker's
    live model processes and jobs (its own counters: no process is asked)."""
    live = getattr(request.app.state, "live", None)
    pool = LivePoolOut(**dataclasses.asdict(live.status())) if live is not None else None
    return Health(status="ok", schema_version=request.app.state.schema_version, live=pool)
