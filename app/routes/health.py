"""Internal pages under /-/ (never collide with data names)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.models import Health

router = APIRouter(prefix="/-", tags=["internal"])


@router.get("/health", response_model=Health)
async def read_health(request: Request) -> Health:
    """Liveness: the app is up and its database schema was checked at startup."""
    return Health(status="ok", schema_version=request.app.state.schema_version)
