"""Bounded model work for the live endpoints (inference, steering), in child processes.

Each worker process hands its model work to `processes` child processes of its own (spawned: no
thread or lock of the server is copied into them), started when the worker starts (`prestart`,
which can also load the runs' models in them) or else on first use. A child runs one job at
a time, at a lower CPU priority (`os.nice(nice)`) on `torch_threads` torch threads, and loads and
keeps the runs' models itself (`app.live.inference.load_artifacts` is cached in the child). So a model
never holds the GIL of the event loop that answers the stored pages, and when pages and models
both want the CPUs the kernel serves the pages first. (Threads in the server's own process, as
before, let a steering burst raise the stored pages' p99 tenfold: README, "Live endpoints".)

Admission: at most `max_jobs` jobs per worker at once, running or waiting; one more is refused at
once with LiveBusy (a 503 with Retry-After), so a burst cannot grow a queue. A job keeps its slot
until its child is done, even if the client has gone, so the bound holds for the CPU and not only
for the requests. A child that dies during a job (killed, out of memory) fails that job with
LiveFailed (also a 503 with Retry-After), and a new child is started for the next job; a job that
runs longer than `timeout` seconds has its child killed the same way, so no request waits forever.

A job is `function(*args)`: a module-level function (sent by reference) and picklable arguments;
its result comes back pickled, and an exception raised in the child is raised in the caller.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle  # nosec B403  # only between this process and the children it spawned
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:
    from app.live.inference import ModelSource

T = TypeVar("T")
log = logging.getLogger(__name__)
STOP_SECONDS = 5.0  # how long a stopping child may take before it is killed
START_SECONDS = 120.0  # how long a new child may take to import torch and say it is ready
READY = b"ready"


class LiveUnavailable(RuntimeError):
    """No live answer now; try again after `retry_after` seconds (a 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LiveBusy(LiveUnavailable):
    """Every live slot of this worker is taken."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "The server is busy with other live requests; try again in a few seconds.", retry_after
        )


class LiveFailed(LiveUnavailable):
    """The model process died, or overran its time, during this job; a new one takes the next."""


# ----------------------------------------------------------------------------- the child


def _portable(exc: Exception) -> Exception:
    """`exc` with the child's traceback as a note (the parent logs it with a 500), or, if it
    cannot be pickled back, a RuntimeError saying what it was."""
    exc.add_note("in the live model process:\n" + "".join(traceback.format_exception(exc)))
    try:
        pickle.loads(pickle.dumps(exc))  # nosec B301  # our own bytes, a moment old
        return exc
    except Exception:  # an exception whose constructor takes other arguments than its args
        plain = RuntimeError(f"{type(exc).__name__}: {exc}")
        plain.__notes__ = exc.__notes__
        return plain


def _child_main(conn: Connection, nice: int, torch_threads: int) -> None:
    """A child's loop: run each job it receives and send back ("ok", result) or ("error",
    exception), until the parent closes the pipe (or dies, which closes it too)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    if nice > 0:
        os.nice(nice)
    if torch_threads > 0:
        import torch

        torch.set_num_threads(torch_threads)
    conn.send_bytes(READY)  # the job timeout starts counting after the imports
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            function, args = pickle.loads(message)  # nosec B301  # sent by the parent, see above
            reply: tuple[str, Any] = ("ok", function(*args))
        except Exception as exc:
            reply = ("error", _portable(exc))
        try:
            conn.send(reply)  # pickled whole before a byte is written
        except (BrokenPipeError, EOFError, ConnectionResetError):
            return
        except Exception as exc:  # a result that cannot be pickled
            conn.send(("error", _portable(RuntimeError(f"the live result could not be sent back: {exc}"))))


# ----------------------------------------------------------------------------- the parent


class LiveProcess:
    """One child process running jobs one at a time: started on first use, and again after it
    died or was killed. `call` is blocking: the executor calls it from one of its threads."""

    def __init__(self, name: str, nice: int, torch_threads: int, timeout: float, retry_after: int) -> None:
        self.name = name
        self.nice = nice
        self.torch_threads = torch_threads
        self.timeout = timeout
        self.retry_after = retry_after
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self.ready = False  # started and answered READY (read by /-/health without asking the child)
        self.closed = False  # set by LiveExecutor.shutdown: no new child is started after it

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (None before the first job, or after it died)."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    @property
    def running(self) -> bool:
        """Whether the child runs now, asked without reaping it (a look at its sentinel), so any
        thread may ask while the child's own thread waits for it."""
        process = self._process
        try:
            return process is not None and not wait([process.sentinel], 0)
        except (OSError, ValueError):  # closed meanwhile
            return False

    def _start(self) -> tuple[BaseProcess, Connection]:
        if self.closed:
            raise LiveFailed("The server is shutting down.", self.retry_after)
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_child_main,
            args=(child_end, self.nice, self.torch_threads),
            name=self.name,
            daemon=True,  # ended with this process if it exits without `stop`
        )
        process.start()
        child_end.close()  # the child's end lives in the child only: its death closes the pipe
        self._process, self._conn = process, parent_end
        try:
            answered = bool(wait([parent_end, process.sentinel], START_SECONDS)) and parent_end.poll()
            ready = answered and parent_end.recv_bytes() == READY
        except (EOFError, OSError):
            ready = False
        if not ready or self.closed:  # closed: shut down while it started
            self.stop()
            if not self.closed:
                log.warning("the live model process %s did not start", self.name)
            raise LiveFailed("The live model process could not start; try again.", self.retry_after)
        self.ready = True
        return process, parent_end

    def ensure_started(self) -> tuple[BaseProcess, Connection]:
        """The running child and its pipe, started first if there is none (or it died)."""
        process, conn = self._process, self._conn
        if process is None or conn is None or not process.is_alive():
            self.stop()
            process, conn = self._start()
        return process, conn

    def call(self, function: Callable[..., T], args: tuple[object, ...]) -> T:
        """`function(*args)` in the child; its exception re-raised here; LiveFailed if the child
        dies or runs past the timeout (it is stopped; the next call starts a new one)."""
        process, conn = self.ensure_started()
        job = pickle.dumps((function, args))  # an argument that cannot be pickled fails here, a bug
        try:
            conn.send_bytes(job)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise self._died() from None
        if not wait([conn, process.sentinel], self.timeout):
            self.stop()
            log.warning("live job %s ran over %g s: its process was stopped", function.__name__, self.timeout)
            raise LiveFailed(
                f"The model took longer than {self.timeout:g} s and was stopped; try again.", self.retry_after
            )
        reply: tuple[str, Any] | None = None
        try:
            if conn.poll():
                reply = conn.recv()
        except (EOFError, OSError):
            reply = None
        if reply is None:  # the pipe closed without an answer: the child is gone
            raise self._died()
        status, value = reply
        if status == "error":
            raise value
        return cast(T, value)

    def _died(self) -> LiveFailed:
        process = self._process
        if process is not None:
            process.join(STOP_SECONDS)
        code = process.exitcode if process is not None else None
        self.stop()
        log.warning("the live model process %s ended during a job (exit code %s)", self.name, code)
        return LiveFailed(
            f"The live model process stopped during this request (exit code {code}); "
            "a new one takes the next request: try again.",
            self.retry_after,
        )

    def stop(self) -> None:
        """End the child (closing its pipe ends it; killed if it does not end at once)."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        self.ready = False
        if conn is not None:
            conn.close()
        if process is not None:
            process.join(0.5)
            if process.is_alive():
                process.kill()
                process.join(STOP_SECONDS)

    def kill(self) -> None:
        """Kill the child now, from any thread (a running `call` then fails with LiveFailed)."""
        process = self._process
        if process is not None and process.is_alive():
            process.kill()


class LiveExecutor:
    """Child processes for model work with an admission limit (see the module docstring)."""

    def __init__(
        self,
        processes: int,
        max_jobs: int,
        retry_after: int,
        torch_threads: int,
        nice: int = 10,
        timeout: float = 60.0,
    ) -> None:
        self.max_jobs = max(max_jobs, processes)
        self.retry_after = retry_after
        self.children = [
            LiveProcess(f"monosemantic-live-{i}", nice, torch_threads, timeout, retry_after)
            for i in range(processes)
        ]
        self._idle: queue.SimpleQueue[LiveProcess] = queue.SimpleQueue()
        for child in self.children:
            self._idle.put(child)
        # One thread per child, each waiting on its child's answer (no GIL held meanwhile).
        self._pool = ThreadPoolExecutor(max_workers=processes, thread_name_prefix="live")
        self._jobs = 0
        self._running = 0
        self._lock = threading.Lock()

    @property
    def jobs(self) -> int:
        """Jobs admitted and not yet finished (running or waiting for a process)."""
        return self._jobs

    def status(self) -> LivePool:
        """The pool as this worker sees it, from its own counters (no round trip to a child)."""
        running = [child for child in self.children if child.running]
        return LivePool(
            processes=len(self.children),
            alive=len(running),
            ready=sum(child.ready for child in running),
            jobs_admitted=self._jobs,
            jobs_running=self._running,
            max_jobs=self.max_jobs,
        )

    def prestart(self, warm: Callable[..., object] | None = None, *args: object) -> None:
        """Start every child now, in the background, and run `warm(*args)` in each (say, load
        the runs' models), so the first requests do not pay for it; a request arriving meanwhile
        waits for its child as it would on a first use. A failure is logged, not raised."""
        for _ in self.children:
            self._pool.submit(self._warm, warm, args)

    def _warm(self, warm: Callable[..., object] | None, args: tuple[object, ...]) -> None:
        child = self._idle.get()
        try:
            if warm is None:
                child.ensure_started()
            else:
                child.call(warm, args)
        except Exception as exc:
            if not child.closed:
                log.warning("pre-starting the live model process %s failed: %s", child.name, exc)
        finally:
            self._idle.put(child)

    def refuse_if_full(self) -> None:
        """LiveBusy if every slot is taken now: a request that `run` would refuse skips its
        database reads (`run` still decides for certain)."""
        if self._jobs >= self.max_jobs:
            raise LiveBusy(self.retry_after)

    def _release(self, _future: Future[Any]) -> None:
        with self._lock:
            self._jobs -= 1

    def _call(self, function: Callable[..., T], args: tuple[object, ...]) -> T:
        child = self._idle.get()  # one thread per child: one is always idle here
        with self._lock:
            self._running += 1
        try:
            return child.call(function, args)
        finally:
            with self._lock:
                self._running -= 1
            self._idle.put(child)

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` in a child process; raises LiveBusy at once if `max_jobs` are admitted."""
        with self._lock:
            if self._jobs >= self.max_jobs:
                raise LiveBusy(self.retry_after)
            self._jobs += 1
        try:
            future = self._pool.submit(self._call, function, args)
        except BaseException:
            self._release(Future())
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Stop every child: the idle ones now, the busy ones by a kill (their threads then
        fail their jobs with LiveFailed and stop them)."""
        for child in self.children:
            child.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        idle = set()
        while True:
            try:
                idle.add(id(self._idle.get_nowait()))
            except queue.Empty:
                break
        for child in self.children:
            if id(child) in idle:
                child.stop()
            else:
                child.kill()


@dataclass(frozen=True)
class LivePool:
    """A worker's live model processes and jobs now (shown by /-/health)."""

    processes: int  # child processes this worker runs model work in
    alive: int  # of them running now (a dead one is replaced by the next job)
    ready: int  # of them started and ready for a job
    jobs_admitted: int  # running or waiting for a child
    jobs_running: int  # in a child now
    max_jobs: int  # admitted at once; one more is answered 503 with Retry-After


Answer = TypeVar("Answer")


@dataclass(frozen=True)
class Prepared(Generic[Answer]):
    """What a live request reads from the database before its model runs (the session is closed
    by then, so no connection is held during model work), and its answer without model output."""

    run_id: int
    source: ModelSource  # the model, hook and SAE the run was analysed on
    empty: Answer
