"""Jobs for the live model processes in tests: module-level, so a child process can import them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def hold(flags: str) -> int:
    """Touch `started` in the folder `flags`, wait (at most 60 s) until `release` appears there;
    returns the process id it ran in."""
    Path(flags, "started").touch()
    deadline = time.monotonic() + 60
    while not Path(flags, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def kept_models() -> int:
    """How many runs' models this (live) process has loaded and keeps."""
    from app.live import inference

    return inference._load_artifacts.cache_info().currsize


def wait_for(condition: Callable[[], bool], seconds: float = 90) -> bool:
    """Poll `condition` every 20 ms until it holds or `seconds` pass; returns it a last time."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()
