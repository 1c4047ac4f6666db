"""Live model work in child processes (app/live/pool.py): at a lower CPU priority, out of the server's
process, ended with the app; a child killed mid-request or running over its time gives a clean
503 and the next request works; a steering burst on a real server gets 503s with Retry-After
while the stored pages answer."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import livejobs
import pytest
from appdb import SAE_RUN, FixtureDB
from conftest import Server
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.live.pool import LiveExecutor, LiveFailed
from app.main import create_app
from app.security import CONTENT_SECURITY_POLICY
from app.settings import Settings
from trainer.store.schema import Run, make_engine

STEER = f"/runs/{SAE_RUN}/steer?text=the+cat&feature=2&tokens=4"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child is a zombie until it is reaped: count it as gone.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_child_runs_jobs_at_lower_priority_and_reports_their_errors() -> None:
    """Jobs run in one child (not this process) at +5 niceness; a job's exception comes back
    with its type and message; a job over the time limit is stopped (LiveFailed) and the next
    job gets a new child; shutdown ends it."""
    live = LiveExecutor(processes=1, max_jobs=2, retry_after=3, torch_threads=1, nice=5, timeout=2.0)

    async def jobs() -> tuple[int, int, int]:
        pid = await live.run(os.getpid)
        niceness = await live.run(os.nice, 0)
        with pytest.raises(ValueError, match="no such thing"):
            await live.run(livejobs.fail, "no such thing")
        assert await live.run(os.getpid) == pid  # the child survives its jobs' errors
        began = time.monotonic()
        with pytest.raises(LiveFailed, match="longer than 2 s") as stopped:
            await live.run(time.sleep, 60)
        assert time.monotonic() - began < 30 and stopped.value.retry_after == 3
        return pid, niceness, await live.run(os.getpid)

    try:
        first, niceness, second = asyncio.run(jobs())
    finally:
        live.shutdown()
    assert first != os.getpid() and niceness == min(os.nice(0) + 5, 19)  # 19: the lowest priority
    assert second != first and not _alive(first)
    assert livejobs.wait_for(lambda: not _alive(second), 10), "the child outlived shutdown"


@pytest.fixture
def blocking_client(fixture_db: FixtureDB, writable_db: str, tmp_path: Path) -> tuple[TestClient, Path]:
    """An app whose 'sae' run's model config is a FIFO: loading the model blocks in the child
    until something opens the FIFO's other end, so a request is mid-way through its model work."""
    assert fixture_db.artifacts is not None
    artifacts = Path(shutil.copytree(fixture_db.artifacts, tmp_path / "artifacts"))
    config = artifacts / "lm" / "config.json"
    (tmp_path / "config.json").write_bytes(config.read_bytes())
    config.unlink()
    os.mkfifo(config)
    engine = make_engine(writable_db)
    with Session(engine) as session:
        session.execute(update(Run).where(Run.slug == SAE_RUN).values(artifacts_path=str(artifacts)))
        session.commit()
    engine.dispose()
    return (
        # no pre-start: it would load the model, so block on the FIFO, before the test's request
        TestClient(create_app(Settings(database_url=writable_db, live_timeout=120, live_prestart=False))),
        config,
    )


def _reader_waiting(fifo: Path, opened: list[int]) -> bool:
    """Whether the child is reading the FIFO (so inside the request's model work); keeps the
    writing end open (in `opened`), so the child then waits in read()."""
    try:
        opened.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
            raise
        return False
    return True


def _kill_mid_request(client: TestClient, fifo: Path, path: str) -> tuple[httpx.Response, int]:
    """GET `path` in a thread; once its model load reads the FIFO, SIGKILL the model process;
    returns the answer and the killed process's id."""
    live = client.app.state.live  # type: ignore[attr-defined]
    answers: list[httpx.Response] = []
    opened: list[int] = []
    request = threading.Thread(target=lambda: answers.append(client.get(path)))
    request.start()
    try:
        assert livejobs.wait_for(lambda: _reader_waiting(fifo, opened)), "the model load never began"
        pid = live.children[0].pid
        assert pid is not None and pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        request.join(30)
    finally:
        for fd in opened:
            os.close(fd)
    (answer,) = answers
    return answer, pid


def test_a_child_killed_mid_request_gives_a_503_and_the_next_request_works(
    blocking_client: tuple[TestClient, Path], tmp_path: Path
) -> None:
    client, fifo = blocking_client
    with client:
        live = client.app.state.live  # type: ignore[attr-defined]
        answer, first = _kill_mid_request(client, fifo, f"/api{STEER}")
        assert answer.status_code == 503 and answer.headers["retry-after"] == "2"
        assert "stopped during this request (exit code -9)" in answer.json()["detail"]
        page, second = _kill_mid_request(client, fifo, STEER)  # the app's error page, its headers
        assert page.status_code == 503 and page.headers["retry-after"] == "2" and "Busy" in page.text
        assert "stopped during this request" in page.text
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert live.jobs == 0 and second != first
        fifo.unlink()
        fifo.write_bytes((tmp_path / "config.json").read_bytes())
        assert client.get(f"/api{STEER}").json()["pinned"]["tokens"]
        assert live.children[0].pid not in (None, first, second)


def test_a_steering_burst_gets_503s_while_stored_pages_answer(server: Server) -> None:
    """24 steers at once on 2 workers (4 slots each): the excess gets 503 with Retry-After at
    once, the rest 200, nothing else; a feature page answers 200 while steers are still running."""
    steer = f"/api/runs/{SAE_RUN}/steer"
    params = {"text": "the cat sat on the mat " * 4, "feature": 2, "tokens": 64}

    async def burst() -> tuple[list[httpx.Response], httpx.Response, int]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            steers = [asyncio.create_task(client.get(steer, params=params)) for _ in range(24)]
            await asyncio.wait(steers, return_when=asyncio.FIRST_COMPLETED)
            page = await client.get(f"/runs/{SAE_RUN}/features/2")
            running = sum(not task.done() for task in steers)
            return list(await asyncio.gather(*steers)), page, running

    answers, page, running = asyncio.run(burst())
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {200, 503}, statuses
    assert all(a.headers["retry-after"] == "2" for a in answers if a.status_code == 503)
    assert page.status_code == 200 and running > 0
