"""`monosemantic serve`: several worker processes each on its own SO_REUSEPORT socket, Nagle off,
a clear error for a port in use, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from appdb import REPO, SAE_RUN, FixtureDB, free_port, start_server
from uvicorn import Config

from app.server import NoDelayHttpToolsProtocol, check_port_free


def test_connections_get_tcp_nodelay() -> None:
    """Without it, small responses waited ~40 ms for delayed ACKs on uvicorn's shared socket."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0

            class Transport(asyncio.Transport):
                def get_extra_info(self, name: str, default: object = None) -> object:
                    return {
                        "socket": accepted,
                        "peername": ("127.0.0.1", 1),
                        "sockname": ("127.0.0.1", 2),
                    }.get(name)

            config = Config("app.main:create_app", factory=True)
            config.load()
            loop = asyncio.new_event_loop()
            try:
                protocol = NoDelayHttpToolsProtocol(
                    config, server_state=_ServerState(), app_state={}, _loop=loop
                )
                protocol.connection_made(Transport())
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            finally:
                loop.close()


class _ServerState:
    def __init__(self) -> None:
        self.total_requests = 0
        self.connections: set[object] = set()
        self.tasks: set[object] = set()
        self.default_headers: list[tuple[bytes, bytes]] = []


def test_port_in_use_is_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve on 127.0.0.1:{port}"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again


def workers_of(pid: int) -> list[str]:
    """The server processes started by `pid` (not multiprocessing's resource tracker)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]


def test_two_workers_serve_and_stop_cleanly_on_sigterm(fixture_db: FixtureDB) -> None:
    proc, base = start_server(fixture_db, workers=2)
    try:
        with httpx.Client(base_url=base) as client:  # keep-alive: one connection, many requests
            assert all(client.get("/-/health").status_code == 200 for _ in range(20))
        # New connections are spread over the workers by the kernel; all are answered.
        pages = [httpx.get(f"{base}/runs/{SAE_RUN}/features/{i}") for i in range(8)]
        assert all(page.status_code == 200 and f"Feature {i}" in page.text for i, page in enumerate(pages))
        children = workers_of(proc.pid)
        assert len(children) == 2, children
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        time.sleep(0.2)
        for pid in children:
            assert subprocess.run(["kill", "-0", pid], capture_output=True).returncode != 0, (
                "worker left running"
            )
    finally:
        if proc.poll() is None:
            proc.kill()


def test_workers_stop_when_the_server_is_killed(fixture_db: FixtureDB) -> None:
    """SIGKILL leaves the parent no chance to stop its workers: they notice and stop themselves."""
    proc, base = start_server(fixture_db, workers=2)
    children = workers_of(proc.pid)
    assert len(children) == 2
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in children):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children), "orphaned workers still running"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/-/health", timeout=2)


def test_second_server_on_the_same_port_is_refused(fixture_db: FixtureDB) -> None:
    proc, base = start_server(fixture_db, workers=2)
    try:
        port = base.rsplit(":", 1)[1]
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "monosemantic.cli",
                "serve",
                "--db",
                fixture_db.url,
                "--port",
                port,
                "--workers",
                "2",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in second.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert free_port()  # nothing leaked


def test_ctrl_c_stops_every_process_quietly(fixture_db: FixtureDB) -> None:
    """Ctrl-C signals the terminal's whole process group (server and workers), maybe twice."""
    port = free_port()
    command = [sys.executable, "-m", "monosemantic.cli", "serve", "--db", fixture_db.url, "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--workers", "2"], cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/-/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        children = workers_of(proc.pid)
        assert len(children) == 2
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
