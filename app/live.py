"""Bounded model work for the live endpoints (inference, steering).

Each worker process runs model work on its own small thread pool (`live_threads`) and admits at
most `live_max_jobs` jobs at once, running or waiting; one more is refused at once with
`LiveBusy` (a 503 with Retry-After), so a burst of live requests cannot grow a queue, hold
database connections or starve the stored pages. A job keeps its slot until its thread is done,
even if the client has gone, so the bound holds for the CPU and not only for the requests.
Torch runs each job on `live_torch_threads` intra-op threads: two processes on two cores with a
thread per core each would fight the pages' event loops for the CPUs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from app.inference import ModelSource

T = TypeVar("T")


class LiveBusy(RuntimeError):
    """Every live slot of this worker is taken; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("The server is busy with other live requests; try again in a few seconds.")
        self.retry_after = retry_after


def _limit_torch_threads(n_threads: int) -> None:
    """Torch's intra-op threads for this process (0: leave torch's default, a thread per core)."""
    if n_threads > 0:
        import torch

        torch.set_num_threads(n_threads)


class LiveExecutor:
    """A thread pool for model work with an admission limit (see the module docstring)."""

    def __init__(self, threads: int, max_jobs: int, retry_after: int, torch_threads: int) -> None:
        self.max_jobs = max(max_jobs, threads)
        self.retry_after = retry_after
        self._pool = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="live",
            initializer=_limit_torch_threads,
            initargs=(torch_threads,),
        )
        self._jobs = 0
        self._lock = threading.Lock()

    @property
    def jobs(self) -> int:
        """Jobs admitted and not yet finished (running or waiting for a thread)."""
        return self._jobs

    def _release(self, _future: Future[Any]) -> None:
        with self._lock:
            self._jobs -= 1

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` on the pool; raises LiveBusy at once if `max_jobs` are admitted."""
        with self._lock:
            if self._jobs >= self.max_jobs:
                raise LiveBusy(self.retry_after)
            self._jobs += 1
        try:
            future = self._pool.submit(function, *args)
        except BaseException:
            self._release(Future())
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


Answer = TypeVar("Answer")


@dataclass(frozen=True)
class Prepared(Generic[Answer]):
    """What a live request reads from the database before its model runs (the session is closed
    by then, so no connection is held during model work), and its answer without model output."""

    run_id: int
    source: ModelSource  # the model, hook and SAE the run was analysed on
    empty: Answer
