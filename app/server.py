"""How `monosemantic serve` runs the app: uvicorn processes, their event loop and HTTP protocol.

Measured with bench/bench_app.py (32 closed-loop clients on loopback, 2 cores):
- uvloop answered some connections far later than others under load (search p99 ~670 ms at a
  p50 of ~58 ms, one worker); the standard asyncio loop, at the same throughput, ~80-110 ms.
- asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets made with
  proto=IPPROTO_TCP; uvicorn's own multi-worker socket is made with proto 0, so every small
  response waited ~40 ms for the client's delayed ACK. `NoDelayHttpToolsProtocol` sets it.
- uvicorn's workers share one listening socket, and the first to wake accepts a whole burst of
  connections: 32 clients all landed on one of two workers. Here each worker listens on its own
  SO_REUSEPORT socket, and the kernel spreads connections over them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.connection import wait
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

APP = "app.main:create_app"
EVENT_LOOP = "asyncio"
STOP_SECONDS = 10  # a worker's grace period to finish its requests
ORPHAN_CHECK_SECONDS = 1.0


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with TCP_NODELAY set on every TCP connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


UVICORN_OPTIONS: dict[str, Any] = {
    "factory": True,
    "loop": EVENT_LOOP,
    "http": NoDelayHttpToolsProtocol,
    "log_level": "warning",
}


def _address(host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return family, address


def check_port_free(host: str, port: int) -> None:
    """Raise OSError with a clear message if something already listens on host:port (another
    server would otherwise share the port through SO_REUSEPORT and take half the requests)."""
    family, address = _address(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(f"cannot serve on {host}:{port}: {exc.strerror} (pick another --port)") from exc


def _stop_when_orphaned(parent_pid: int) -> None:
    """Ask this worker to stop (SIGTERM) once its parent is gone, even if the parent was killed
    with SIGKILL and could not stop it: an orphan would keep serving on the port."""
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def _run_worker(host: str, port: int, parent_pid: int) -> None:
    """One server process on its own SO_REUSEPORT socket."""
    threading.Thread(target=_stop_when_orphaned, args=(parent_pid,), daemon=True).start()
    family, address = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    try:
        uvicorn.Server(uvicorn.Config(APP, **UVICORN_OPTIONS)).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches every process of the terminal: uvicorn has shut down, then re-raised it


def serve(host: str, port: int, workers: int) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM); the exit code (non-zero if a worker failed).
    The database URL reaches the workers in DATABASE_URL, as `create_app` reads its settings.
    Once stopping, SIGINT and SIGTERM stay ignored: the caller is about to exit."""
    if workers <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(APP, host=host, port=port, workers=workers, **UVICORN_OPTIONS)
        return 0
    check_port_free(host, port)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_run_worker, args=(host, port, os.getpid()), name=f"monosemantic-worker-{i}")
        for i in range(workers)
    ]

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    stopping_signals = (signal.SIGINT, signal.SIGTERM)
    for sig in stopping_signals:
        signal.signal(sig, stop)
    try:
        for process in processes:
            process.start()
        wait([p.sentinel for p in processes])  # returns when any worker ends: none should
        ended = next(p for p in processes if not p.is_alive())
        print(f"error: server process {ended.name} exited with code {ended.exitcode}", flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in stopping_signals:  # a second Ctrl-C must not cut the workers' shutdown short
            signal.signal(sig, signal.SIG_IGN)
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes open requests, then exits
        for process in processes:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
