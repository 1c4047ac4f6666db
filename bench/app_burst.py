"""bench_app.py's load under stress: a burst of live steers, or writers on the served database.

In each phase `page_clients` closed-loop clients load stored feature pages (random ones of a
list), a low-rate prober samples /-/health on a new connection each time (so both workers are
sampled), and in the stress phase either `live_clients` clients send steers back to back (each
as soon as its last one is answered), or a writer command runs on the served database
(`monosemantic prerender --force`, or `analyze`). A BASELINE phase (the same load, no stress)
comes first, so the figures can also be read as ratios against it.

Pages and health are loaded by Debian's wrk when it is installed (one wrk process each; the
prober's Lua script waits HEALTH_DELAY_MS between requests on each of its HEALTH_CONNECTIONS), else
by a Python asyncio/httpx generator in this process. wrk measures in C at a few microseconds of
CPU a request; the Python one needs ~2 ms of CPU a request, so on two shared cores its p99s are
mostly its own queue. The steering clients are Python in a process of their own either way
(wrk cannot tell a 503 from a slow 200 per route, and one Python client process tops out near
one core). Each phase reports n, p50/p99, 503 counts and errors per route.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import random
import signal
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

from trainer.store.schema import Run, make_engine

HEALTH_INTERVAL = 0.05  # the Python prober's pause between /-/health requests (~20 a second)
HEALTH_DELAY_MS = 50  # wrk's prober: the same pause, on each of its connections
HEALTH_CONNECTIONS = 4  # so ~80 probes a second: ~1,200 samples in a 15 s phase
STEER_TEXT = "the cat sat on the mat and the dog"
WRK_TIMEOUT = "10s"
WRK_RESULT = "BURST-RESULT "


@dataclass
class RouteStats:
    """Latencies and outcomes of one route over one phase."""

    latencies_ms: list[float] = field(default_factory=list)
    ok: int = 0
    busy: int = 0  # 503 answers (live admission or an exhausted connection pool)
    errors: int = 0  # anything else: other statuses, timeouts, connection errors
    client_cpu_seconds: float | None = None  # the CPU the clients' own process used meanwhile

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

    def summary(self) -> Summary:
        return Summary(
            len(self.latencies_ms),
            self.percentile(50),
            self.percentile(99),
            self.ok,
            self.busy,
            self.errors,
            self.client_cpu_seconds,
        )


@dataclass(frozen=True)
class Summary:
    """What the report shows of one route over one phase, from either load generator."""

    n: int
    p50_ms: float
    p99_ms: float
    ok: int
    busy: int  # 503s
    errors: int  # other statuses >= 400, timeouts, connection errors
    client_cpu_seconds: float | None = None  # Python clients in a process of their own: its CPU


# ----------------------------------------------------------------------------- artifacts


def build_artifacts(root: Path, d_sae: int, seed: int = 0) -> tuple[Path, Path]:
    """A demo-shaped model (ModelConfig's defaults: 128 context, 512 neurons) and a TopK SAE with
    `d_sae` features, randomly initialised (their compute is what a live request costs), with a
    tokenizer trained on a few sentences; returns (artifacts dir, SAE dir)."""
    import torch

    from trainer.config import ModelConfig, SAEConfig, TokenizerConfig
    from trainer.corpus.tokenizer import train_tokenizer
    from trainer.lm.model import OneLayerTransformer
    from trainer.sae import SparseAutoencoder

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
    command = [sys.executable, "-m", "monosemantic.cli", "prerender", "--db", db_url, "--run", slug]
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
            cpu = time.process_time()
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)
            stats.client_cpu_seconds = time.process_time() - cpu
        return stats

    conn.send(asyncio.run(steer()))


# ----------------------------------------------------------------------------- load (wrk)

# wrk's Lua script; its args (after `--`): the file of url paths, one a line, and a random seed.
# Each request asks for a random path of the list; answers are counted as ok (< 400), busy (503)
# or other; done() prints one JSON line. The prober's script adds `delay` (wrk waits that many
# milliseconds before each request) and closes each connection after its answer.
WRK_SCRIPT = r"""
local paths = {}
local threads = {}
counts = {ok = 0, busy = 0, other = 0}

wrk.headers["Accept-Encoding"] = "gzip"

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  for path in io.lines(args[1]) do
    paths[#paths + 1] = wrk.format("GET", path)
  end
  math.randomseed(tonumber(args[2]))
end

function request()
  return paths[math.random(#paths)]
end

function response(status, headers, body)
  if status == 503 then
    counts.busy = counts.busy + 1
  elseif status < 400 then
    counts.ok = counts.ok + 1
  else
    counts.other = counts.other + 1
  end
end

function done(summary, latency, _)
  local c = threads[1]:get("counts")
  local e = summary.errors
  io.stdout:write(string.format(
    'BURST-RESULT {"requests": %d, "seconds": %.6f, "p50_ms": %.3f, "p99_ms": %.3f, '
      .. '"ok": %d, "busy": %d, "other": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, c.ok, c.busy, c.other, e.connect + e.read + e.write + e.timeout))
end
"""
PROBE_SCRIPT = (
    WRK_SCRIPT
    + f"""
wrk.headers["Connection"] = "close"  -- a new connection each time: the kernel picks the worker

function delay()
  return {HEALTH_DELAY_MS}
end
"""
)


async def start_wrk(
    script: str, base: str, paths: list[str], connections: int, workdir: Path, name: str, seed: int
) -> asyncio.subprocess.Process:
    """wrk on one thread with `connections` connections, requesting random `paths` until stopped
    (`stop_wrk`); its -d is an hour, a backstop."""
    script_file, path_file = workdir / f"{name}.lua", workdir / f"{name}.txt"
    script_file.write_text(script)
    path_file.write_text("".join(f"{path}\n" for path in paths))
    command = ["wrk", "-t", "1", "-c", str(connections), "-d", "3600s", "--timeout", WRK_TIMEOUT]
    command += ["-s", str(script_file), base, "--", str(path_file), str(seed)]
    return await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )


async def stop_wrk(proc: asyncio.subprocess.Process) -> Summary:
    """Interrupt wrk (SIGINT until it exits: a signal may land on its load thread rather than the
    main thread sleeping out -d) and read the summary its done() printed."""
    while proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 0.05)
        except TimeoutError:
            pass
    assert proc.stdout is not None  # nosec B101  # started with stdout=PIPE
    output = (await proc.stdout.read()).decode(errors="replace")
    lines = [line for line in output.splitlines() if line.startswith(WRK_RESULT)]
    if not lines:
        raise SystemExit(f"wrk failed (exit code {proc.returncode}):\n{output}")
    result = json.loads(lines[0][len(WRK_RESULT) :])
    if result["requests"] == 0:
        raise SystemExit(f"wrk got no answer:\n{output}")
    errors = result["other"] + result["socket_errors"]
    nan = math.nan
    return Summary(
        n=result["requests"],
        p50_ms=result["p50_ms"] or nan,
        p99_ms=result["p99_ms"] or nan,
        ok=result["ok"],
        busy=result["busy"],
        errors=errors,
    )


# ----------------------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    seconds: float
    routes: dict[str, Summary]


async def _stress(seconds: float, writer: list[str] | None) -> float:
    """Sleep `seconds`, or run `writer` to its end; the seconds it took."""
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
    return time.perf_counter() - started


async def run_phase(
    name: str,
    base: str,
    page_paths: list[str],
    page_clients: int,
    seconds: float,
    live: tuple[str, int, int] | None = None,
    writer: list[str] | None = None,
    workdir: Path | None = None,
) -> Phase:
    """Load pages and health for `seconds` (or until `writer`, a command, exits), with
    `live` = (slug, n_features, clients) steering meanwhile; by wrk if `workdir` (its files'
    folder) is given, else by the Python generator."""
    steering, receiver = None, None
    if live is not None:
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        steering = context.Process(target=_steering_process, args=(base, *live, seconds, sender))
        steering.start()
        assert await asyncio.to_thread(receiver.recv) == "started"  # nosec B101  # our own child
    if workdir is not None:
        pages = await start_wrk(WRK_SCRIPT, base, page_paths, page_clients, workdir, "pages", 1)
        health = await start_wrk(PROBE_SCRIPT, base, ["/-/health"], HEALTH_CONNECTIONS, workdir, "health", 2)
        elapsed = await _stress(seconds, writer)
        routes = {"feature page": await stop_wrk(pages), "health": await stop_wrk(health)}
    else:
        stats = {"feature page": RouteStats(), "health": RouteStats()}
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        once = httpx.Limits(max_keepalive_connections=0)  # a new connection for each health probe
        timeout = httpx.Timeout(60.0)
        async with (
            httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout, trust_env=False) as client,
            httpx.AsyncClient(base_url=base, limits=once, timeout=timeout, trust_env=False) as prober,
        ):
            tasks = [
                asyncio.create_task(_pages(client, page_paths, stats["feature page"], stop, seed))
                for seed in range(page_clients)
            ]
            tasks.append(asyncio.create_task(_health(prober, stats["health"], stop)))
            elapsed = await _stress(seconds, writer)
            stop.set()
            await asyncio.gather(*tasks)
        routes = {route: route_stats.summary() for route, route_stats in stats.items()}
    if steering is not None and receiver is not None:
        routes["steer"] = (await asyncio.to_thread(receiver.recv)).summary()
        steering.join()
    return Phase(name, elapsed, routes)


def report(phases: list[Phase], targets_ms: dict[str, float]) -> bool:
    """Print each phase's routes (each stressed phase against the BASELINE before it), and with
    several rounds the median p99 of each phase and route; True if every target was met with no
    errors but 503s."""
    print(
        f"\n{'phase':<26}{'route':<14}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}{'ok':>7}{'503':>6}{'errors':>8}"
        "  target"
    )
    met = True
    baseline: dict[str, Summary] = {}
    p99s: dict[tuple[str, str], list[float]] = {}
    for phase in phases:
        kind = phase.name.split(" #")[0]
        is_baseline = kind == "BASELINE"
        if is_baseline:
            baseline = phase.routes
        for route, stats in phase.routes.items():
            p99s.setdefault((kind, route), []).append(stats.p99_ms)
            target = None if is_baseline else targets_ms.get(route)
            verdict = ""
            if target is not None:
                ok = stats.p99_ms < target and stats.errors == 0
                met &= ok
                verdict = f"p99 < {target:.0f} ms, 0 errors: " + ("ok" if ok else "MISSED")
            if route in baseline and not is_baseline:
                verdict += f"  (p99 {stats.p99_ms / baseline[route].p99_ms:.1f}x baseline)"
            if stats.client_cpu_seconds is not None:
                verdict += f"  (its clients used {stats.client_cpu_seconds:.1f} CPU s)"
            print(
                f"{phase.name:<26}{route:<14}{stats.n:>7}{stats.p50_ms:>9.1f}"
                f"{stats.p99_ms:>9.1f}{stats.ok:>7}{stats.busy:>6}{stats.errors:>8}  {verdict}"
            )
            met &= stats.errors == 0
    rounds = max(len(values) for values in p99s.values())
    if rounds > 1:
        print(f"\nmedian p99 over {rounds} rounds (min-max):")
        for (kind, route), values in p99s.items():
            print(
                f"  {kind:<24}{route:<14}{float(np.median(values)):>7.1f} ms"
                f"  ({min(values):.1f}-{max(values):.1f})"
            )
    return met
