"""bench_app.py's load under stress: a burst of live steers, or writers on the served database.

A closed-loop asyncio/httpx load generator (wrk cannot mix slow live requests with page loads
and count 503s apart): `page_clients` clients load stored feature pages, one client samples
/-/health every 20 ms, and in the stress phase either `live_clients` clients send steers
back to back (each as soon as its last one is answered), or a writer command runs on the served
database (`monosemantic prerender --force`, or `analyze`). The steering clients run in a process
of their own: one Python client process tops out near one core (~2 ms of client CPU a request),
and sharing it would make the pages' latencies measure the client's own queue. Each phase reports p50/p99, errors and
503 counts per route; a BASELINE phase (the same page load, no stress) comes first, so the
figures can be read as ratios against it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session

from trainer.schema import Run, make_engine

HEALTH_INTERVAL = 0.02
STEER_TEXT = "the cat sat on the mat and the dog"


@dataclass
class RouteStats:
    """Latencies and outcomes of one route over one phase."""

    latencies_ms: list[float] = field(default_factory=list)
    ok: int = 0
    busy: int = 0  # 503 answers (live admission or an exhausted connection pool)
    errors: int = 0  # anything else: other statuses, timeouts, connection errors

    def record(self, started: float, status: int | None) -> None:
        self.latencies_ms.append(1000 * (time.perf_counter() - started))
        if status is not None and status < 400:
            self.ok += 1
        elif status == 503:
            self.busy += 1
        else:
            self.errors += 1

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


# ----------------------------------------------------------------------------- artifacts


def build_artifacts(root: Path, d_sae: int, seed: int = 0) -> tuple[Path, Path]:
    """A demo-shaped model (ModelConfig's defaults: 128 context, 512 neurons) and a TopK SAE with
    `d_sae` features, randomly initialised (their compute is what a live request costs), with a
    tokenizer trained on a few sentences; returns (artifacts dir, SAE dir)."""
    import torch

    from trainer.config import ModelConfig, SAEConfig, TokenizerConfig
    from trainer.model import OneLayerTransformer
    from trainer.sae import SparseAutoencoder
    from trainer.tokenizer import train_tokenizer

    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "mat", "dog", "and", "a", "of", "to", "in", "is", "it", "was"]
    texts = [" ".join(rng.choice(words) for _ in range(40)) + "." for _ in range(500)]
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=512))
    tokenizer.save(str(root / "tokenizer.json"))
    model_cfg = ModelConfig(vocab_size=tokenizer.get_vocab_size())
    OneLayerTransformer(model_cfg).save(root / "lm")
    sae_cfg = SAEConfig(d_in=model_cfg.d_mlp, d_sae=d_sae, variant="topk", k=16, batch_size=8, n_tokens=8)
    SparseAutoencoder(sae_cfg).save(root / "sae")
    return root, root / "sae"


def attach_artifacts(db_url: str, slug: str, artifacts: Path, sae: Path) -> None:
    """Point run `slug` of the bench database at the model and SAE, so its live endpoints run."""
    engine = make_engine(db_url)
    with Session(engine) as session:
        session.execute(
            update(Run).where(Run.slug == slug).values(artifacts_path=str(artifacts), sae_path=str(sae))
        )
        session.commit()
    engine.dispose()


def prerender(db_url: str, slug: str, force: bool = False) -> subprocess.Popen[bytes]:
    """`monosemantic prerender` of run `slug` as a user runs it (processes: every CPU)."""
    command = [sys.executable, "-m", "trainer.cli", "prerender", "--db", db_url, "--run", slug]
    return subprocess.Popen([*command, *(["--force"] if force else [])], stdout=subprocess.DEVNULL)


def warm_up(base: str, slug: str, requests: int = 12) -> None:
    """Steers on fresh connections (SO_REUSEPORT spreads them over the workers; 12 miss one of
    two workers with p = 1/2048), so the workers have started their model processes and loaded
    the model before the phases: the burst measures serving, not loading."""
    for feature in range(requests):
        with httpx.Client(base_url=base, timeout=120.0, trust_env=False) as client:
            params = {"text": STEER_TEXT, "feature": feature, "tokens": 4}
            client.get(f"/api/runs/{slug}/steer", params=params).raise_for_status()


# ----------------------------------------------------------------------------- load


async def _pages(
    client: httpx.AsyncClient, paths: list[str], stats: RouteStats, stop: asyncio.Event, seed: int
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        started = time.perf_counter()
        try:
            status: int | None = (await client.get(rng.choice(paths))).status_code
        except httpx.HTTPError:
            status = None
        stats.record(started, status)


async def _health(client: httpx.AsyncClient, stats: RouteStats, stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            status: int | None = (await client.get("/-/health")).status_code
        except httpx.HTTPError:
            status = None
        stats.record(started, status)
        await asyncio.sleep(HEALTH_INTERVAL)


async def _steers(
    client: httpx.AsyncClient, slug: str, n_features: int, stats: RouteStats, stop: asyncio.Event, seed: int
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        params = {"text": STEER_TEXT, "feature": rng.randrange(n_features), "tokens": 24}
        started = time.perf_counter()
        try:
            response = await client.get(f"/api/runs/{slug}/steer", params=params)
            status: int | None = response.status_code
        except httpx.HTTPError:
            status = None
        stats.record(started, status)
        if status == 503:  # a client that honours Retry-After, a little sooner
            await asyncio.sleep(float(response.headers.get("retry-after", "1")) / 4)


def _steering_process(
    base: str, slug: str, n_features: int, clients: int, seconds: float, conn: Connection
) -> None:
    """`clients` steering clients for `seconds` in this (separate) process; sends their RouteStats."""

    async def steer() -> RouteStats:
        stats, stop = RouteStats(), asyncio.Event()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(
            base_url=base, limits=limits, timeout=httpx.Timeout(60.0), trust_env=False
        ) as client:
            tasks = [
                asyncio.create_task(_steers(client, slug, n_features, stats, stop, 1000 + i))
                for i in range(clients)
            ]
            conn.send("started")
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)
        return stats

    conn.send(asyncio.run(steer()))


@dataclass
class Phase:
    name: str
    seconds: float
    routes: dict[str, RouteStats]


async def run_phase(
    name: str,
    base: str,
    page_paths: list[str],
    page_clients: int,
    seconds: float,
    live: tuple[str, int, int] | None = None,
    writer: list[str] | None = None,
) -> Phase:
    """Load pages and health for `seconds` (or until `writer`, a command, exits), with
    `live` = (slug, n_features, clients) steering meanwhile."""
    routes = {"feature page": RouteStats(), "health": RouteStats()}
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout, trust_env=False) as client:
        tasks = [
            asyncio.create_task(_pages(client, page_paths, routes["feature page"], stop, seed))
            for seed in range(page_clients)
        ]
        tasks.append(asyncio.create_task(_health(client, routes["health"], stop)))
        steering = None
        if live is not None:
            context = multiprocessing.get_context("spawn")
            receiver, sender = context.Pipe(duplex=False)
            steering = context.Process(target=_steering_process, args=(base, *live, seconds, sender))
            steering.start()
            assert await asyncio.to_thread(receiver.recv) == "started"
        started = time.perf_counter()
        if writer is not None:
            process = await asyncio.create_subprocess_exec(
                *writer, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, stderr = await process.communicate()
            if process.returncode != 0:
                raise SystemExit(f"{' '.join(writer)} failed:\n{stderr.decode(errors='replace')[-2000:]}")
        else:
            await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*tasks)
        if steering is not None:
            routes["steer"] = await asyncio.to_thread(receiver.recv)
            steering.join()
    return Phase(name, elapsed, routes)


def report(phases: list[Phase], targets_ms: dict[str, float]) -> bool:
    """Print each phase's routes; True if every target was met with no errors but 503s."""
    print(
        f"\n{'phase':<22}{'route':<14}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}{'ok':>7}{'503':>6}{'errors':>8}"
        "  target"
    )
    met = True
    baseline = phases[0].routes
    for phase in phases:
        for route, stats in phase.routes.items():
            target = targets_ms.get(route) if phase is not phases[0] else None
            verdict = ""
            if target is not None:
                ok = stats.percentile(99) < target and stats.errors == 0
                met &= ok
                verdict = f"p99 < {target:.0f} ms, 0 errors: " + ("ok" if ok else "MISSED")
            if route in baseline and phase is not phases[0]:
                verdict += f"  (p99 {stats.percentile(99) / baseline[route].percentile(99):.1f}x baseline)"
            print(
                f"{phase.name:<22}{route:<14}{len(stats.latencies_ms):>7}{stats.percentile(50):>9.1f}"
                f"{stats.percentile(99):>9.1f}{stats.ok:>7}{stats.busy:>6}{stats.errors:>8}  {verdict}"
            )
            met &= stats.errors == 0
    return met
