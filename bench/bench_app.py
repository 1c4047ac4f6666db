"""Load-test the web app with wrk: feature pages, feature JSON and searches, 32 concurrent clients.

    python bench/bench_app.py                      # builds a demo-sized synthetic DB in a temp dir
    python bench/bench_app.py --db runs/demo/monosemantic.db
    python bench/bench_app.py --db runs/demo/monosemantic.db --live   # no pre-rendered pages

The load generator is Debian's wrk (`apt-get install wrk`; a Python client tops out near 400
requests/s on 2 cores, below what the app serves). uvicorn runs in a subprocess on a free
127.0.0.1 port (default min(2, CPUs) workers, like `monosemantic serve`); with --live it runs
with MONOSEMANTIC_STORED_PAGES=0, so pages pre-rendered by `monosemantic prerender` are not
used and every page is rendered live. Nothing is warmed up.

Each route gets a list of --requests url paths (distinct features and search tokens; the
reference routes /-/health and /static/app.css repeat one url) and is loaded in two phases by
one wrk thread with --concurrency connections (`-t 1 -c 32 --timeout 10s`), whose Lua script
hands each request the next path of the list:
- COLD: every url once, the first visit (what the server has to render or read);
- WARM: the same urls again, shuffled (from the page cache; each worker keeps its own, so with
  N workers about 1/N of the urls reach the worker that cached them).
A phase ends once every url has been answered (no url is requested twice), or after
--time-limit seconds. wrk reports the latency distribution and errors (connect, read, write,
timeout, and status: answers >= 400); the script also counts the `x-cache` header of each answer
(hit: the worker's memory cache; store: a pre-rendered page; miss: rendered now). Clients are
closed-loop (each sends its next request once answered), so latency includes queueing: at 32
clients the median is about 32 / throughput.

p99 is also printed as a multiple of /-/health's p99 in the same phase, since absolute numbers
depend on the machine and its other load (wrk itself shares the CPUs with the server).
Targets, at 32 concurrent clients: feature page p99 < 50 ms, feature JSON < 50 ms, search < 100 ms.
Exits 1 if any request failed.

Stress modes (bench/app_burst.py; pages and /-/health loaded by wrk when installed, else by a
Python load generator, which prints its p99s but mostly measures its own queue):

    python bench/bench_app.py --live-burst 50      # 50 clients steering while pages load
    python bench/bench_app.py --while-writing      # `prerender --force` on the served database

--live-burst N: the synthetic database's 'sae' run gets a randomly initialised demo-shaped model
and SAE, its pages are pre-rendered, a few steers load the model in every worker, then
--page-clients wrk connections load random ones of 512 of its stored feature pages and a prober
asks /-/health ~80 times a second for --seconds (BASELINE), and again while N Python clients (in
a process of their own) send steers back to back (BURST). Targets in the burst: feature page
p99 < 50 ms and /-/health p99 < 20 ms, with no errors but the 503s of refused steers.
--while-writing: the same page load while `monosemantic prerender --force` re-renders that run's
pages into the served database (WRITING), after the BASELINE.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from trainer.store.schema import (
    Example,
    Feature,
    Run,
    Token,
    TokenFeature,
    display_token,
    ensure_schema,
    make_engine,
    pack_activations,
    pack_token_ids,
    token_text,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "health (reference)"
TARGETS_MS = {"feature page": 50.0, "feature JSON": 50.0, "search": 100.0}
WRK_TIMEOUT = "10s"
SERVER_START_SECONDS = 300  # a shared, busy machine can take minutes to import and warm up
FINISHED, RESULT = "BENCH-FINISHED", "BENCH-RESULT "  # WRK_SCRIPT's output lines


# ----------------------------------------------------------------------------- synthetic DB


def build_demo_db(path: Path, n_features: int = 4096, vocab: int = 4096, seed: int = 0) -> str:
    """A demo-sized database: one complete 'sae' run (and a 512-neuron run) with every table filled."""
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    ensure_schema(engine)
    rng = np.random.default_rng(seed)
    words = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be"]
    raws = [bytes([b]) for b in range(256)]
    while len(raws) < vocab:
        word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(2, 8))))
        raws.append(((" " if rng.random() < 0.6 else "") + word).encode())
    raws[256 : 256 + 2 * len(words)] = [w.encode() for w in words] + [f" {w}".encode() for w in words]
    with Session(engine) as session:
        for slug, kind, n in (("bench-paper-4096", "sae", n_features), ("bench-neurons", "neurons", 512)):
            run = Run(
                slug=slug,
                kind=kind,
                status="complete",
                model_name="bench-lm",
                variant="paper",
                d_in=512,
                n_features=n,
                n_tokens_analyzed=1_000_000,
                metrics={"l0": 20.0, "dead_fraction": 0.05, "fvu": 0.2, "ce_loss_recovered": 0.8},
                density_histogram={
                    "edges": np.linspace(-7, 0, 41).tolist(),
                    "counts": [10] * 40,
                    "n_zero": 3,
                },
            )
            session.add(run)
            session.flush()
            session.execute(
                insert(Token),
                [
                    {
                        "run_id": run.id,
                        "token_id": i,
                        "raw": raw,
                        "text": token_text(raw),
                        "display": display_token(token_text(raw)),
                    }
                    for i, raw in enumerate(raws)
                ],
            )
            features, examples = [], []
            for index in range(n):
                max_act = float(rng.uniform(1, 10))
                ids = rng.choice(vocab, size=30, replace=False).tolist()
                features.append(
                    {
                        "run_id": run.id,
                        "index": index,
                        "density": float(10 ** rng.uniform(-6, -1)),
                        "max_activation": max_act,
                        "mean_activation": max_act / 3,
                        "label": f"synthetic feature {index}",
                        "label_source": "auto",
                        "activation_histogram": {
                            "edges": np.linspace(0, max_act, 41).tolist(),
                            "counts": rng.integers(0, 1000, 40).tolist(),
                        },
                        "band_edges": np.linspace(0, max_act, 11).tolist(),
                        "top_tokens": [
                            {"token_id": t, "count": 50 - i, "mean_activation": 1.0}
                            for i, t in enumerate(ids[:10])
                        ],
                        "logit_positive": [
                            {"token_id": t, "value": 1 / (i + 1)} for i, t in enumerate(ids[10:20])
                        ],
                        "logit_negative": [
                            {"token_id": t, "value": -1 / (i + 1)} for i, t in enumerate(ids[20:30])
                        ],
                        "logit_histogram": {
                            "edges": np.linspace(-1, 1, 41).tolist(),
                            "counts": rng.integers(0, 300, 40).tolist(),
                        },
                        "neighbours": [{"index": int(j), "cosine": 0.5} for j in rng.integers(0, n, 8)],
                    }
                )
                slots = [("top", None, r) for r in range(20)] + [
                    ("interval", b, r) for b in range(5) for r in range(3)
                ]
                for kind_, band, rank in slots:
                    acts = np.maximum(rng.normal(0, max_act / 3, 33), 0)
                    examples.append(
                        {
                            "run_id": run.id,
                            "feature_index": index,
                            "kind": kind_,
                            "band": band,
                            "rank": rank,
                            "max_activation": float(acts[24]),
                            "focus_position": 24,
                            "token_ids": pack_token_ids(rng.integers(0, vocab, 33)),
                            "activations": pack_activations(acts),
                            "source_position": int(rng.integers(0, 1_000_000)),
                        }
                    )
            session.execute(insert(Feature), features)
            session.execute(insert(Example), examples)
            session.execute(
                insert(TokenFeature),
                [
                    {
                        "run_id": run.id,
                        "token_id": t,
                        "rank": r,
                        "feature_index": int(rng.integers(0, n)),
                        "mean_activation": float(10 - r),
                        "count": 100 - r,
                    }
                    for t in range(vocab)
                    for r in range(8)
                ],
            )
        session.commit()
    engine.dispose()
    return url


# ----------------------------------------------------------------------------- urls


def sample_urls(db_url: str, n: int, rng: random.Random) -> dict[str, list[str]]:
    """`n` distinct urls per data route (each feature and search token at most once: a first
    visit is a cache miss), and `n` of each reference route."""
    engine = make_engine(db_url, read_only=True)
    with Session(engine) as session:
        runs = session.execute(select(Run.slug, Run.n_features).where(Run.status == "complete")).all()
        texts = sorted(
            {t for t in session.scalars(select(Token.text).limit(20_000)) if t.strip() and t.isprintable()}
        )
    engine.dispose()
    features = [(slug, i) for slug, n_features in runs for i in range(n_features)]
    html_features, json_features = (
        rng.sample(features, min(n, len(features))),
        rng.sample(features, min(n, len(features))),
    )
    return {
        REFERENCE: ["/-/health"] * n,
        "static file (reference)": ["/static/app.css"] * n,
        "feature page": [f"/runs/{slug}/features/{i}" for slug, i in html_features],
        "feature JSON": [f"/api/runs/{slug}/features/{i}" for slug, i in json_features],
        "search": [
            "/search?" + urlencode({"token": t}, quote_via=quote)
            for t in rng.sample(texts, min(n, len(texts)))
        ],
    }


# ----------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_health(port: int) -> bool:
    """Whether the server on 127.0.0.1:`port` answers /-/health with 200 (http.client: no proxies)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/-/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def log_tail(log: Path, lines: int = 30) -> str:
    return "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])


def start_server(db_url: str, workers: int, live: bool, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`monosemantic serve` (uvicorn, N workers) on a free loopback port,
    its output to `log`; `live`: with MONOSEMANTIC_STORED_PAGES=0 (no pre-rendered pages), else
    the environment as it is."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "monosemantic.cli",
        "serve",
        "--db",
        db_url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "DATABASE_URL": db_url}
    if live:
        env["MONOSEMANTIC_STORED_PAGES"] = "0"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"uvicorn exited with code {proc.returncode}:\n{log_tail(log)}")
        if answers_health(port):
            return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"uvicorn did not answer within {SERVER_START_SECONDS} s:\n{log_tail(log)}")


# ----------------------------------------------------------------------------- load (wrk)

# wrk's Lua script. Its args (after `--`): the file of url paths, one a line, and the number of
# connections. One thread: it hands each request the next path; once the list is used up, a
# connection asking for more gets an empty request (it writes nothing and waits quietly), and when
# all connections are quiet every answer is in: the thread prints FINISHED and stops. wrk's main
# thread sleeps out -d regardless, so the bench interrupts it (SIGINT) on FINISHED, and wrk then
# calls done(), which prints one JSON line.
WRK_SCRIPT = r"""
local threads = {}
local requests = {}
local connections = 1
local checked = false
listed, issued, quiet = 0, 0, 0
x_cache = {}

wrk.headers["Accept-Encoding"] = "gzip"

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  for path in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("GET", path)
  end
  listed = #requests
  connections = tonumber(args[2])
end

function request()
  if not checked then  -- wrk's own call, before the run, to parse what request() returns
    checked = true
    return requests[1]
  end
  if issued < listed then
    issued = issued + 1
    return requests[issued]
  end
  quiet = quiet + 1
  if quiet == connections then
    io.stdout:write("BENCH-FINISHED\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
  return ""
end

function response(status, headers, body)
  local source = headers["x-cache"] or "none"
  x_cache[source] = (x_cache[source] or 0) + 1
end

function done(summary, latency, _)
  local thread = threads[1]
  local sources = {}
  for source, n in pairs(thread:get("x_cache")) do
    sources[#sources + 1] = string.format('"%s": %d', (source:gsub("[^%w_-]", "_")), n)
  end
  local e = summary.errors
  io.stdout:write(string.format(
    'BENCH-RESULT {"listed": %d, "issued": %d, "requests": %d, "seconds": %.6f, '
      .. '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, '
      .. '"x_cache": {%s}}\n',
    thread:get("listed"), thread:get("issued"), summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, e.connect, e.read, e.write, e.timeout, e.status, table.concat(sources, ", ")))
end
"""


@dataclass
class Result:
    """One wrk run: a route's url list loaded once."""

    name: str
    listed: int  # urls in the list
    issued: int  # urls handed out (< listed: stopped by the time limit)
    requests: int  # answers received
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]  # connect, read, write, timeout, status (answers >= 400)
    x_cache: dict[str, int]  # answers per x-cache header value ("none": without one)

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    def share(self, source: str) -> float:
        return self.x_cache.get(source, 0) / max(1, self.requests)


def interrupt_when_finished(proc: subprocess.Popen[str]) -> list[str]:
    """wrk's output lines; on the script's FINISHED line, SIGINT until wrk exits (a signal may land
    on the stopping load thread rather than the main thread sleeping out -d)."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(FINISHED):
            while proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(0.05)
                except subprocess.TimeoutExpired:
                    pass
    return lines


def run_wrk(
    name: str, base: str, paths: list[str], workdir: Path, concurrency: int, time_limit: float
) -> Result:
    """Request each of `paths` once over `concurrency` connections, for `time_limit` s at most."""
    script, path_file = workdir / "bench.lua", workdir / f"{re.sub(r'[^a-z]+', '-', name.lower())}.txt"
    script.write_text(WRK_SCRIPT)
    path_file.write_text("".join(f"{path}\n" for path in paths))
    duration = max(1, math.ceil(time_limit))
    command = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{duration}s", "--timeout", WRK_TIMEOUT]
    command += ["-s", str(script), base, "--", str(path_file), str(concurrency)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(duration + 30, proc.kill)  # wrk stops after -d by itself: a backstop
    watchdog.start()
    try:
        lines = interrupt_when_finished(proc)
        proc.wait()
    finally:
        watchdog.cancel()
    results = [json.loads(line[len(RESULT) :]) for line in lines if line.startswith(RESULT)]
    if proc.returncode != 0 or not results:
        raise SystemExit(f"wrk failed (exit code {proc.returncode}):\n{''.join(lines)}")
    return Result(name=name, **results[0])


def load_routes(
    base: str, routes: dict[str, list[str]], concurrency: int, time_limit: float, seed: int, workdir: Path
) -> tuple[list[Result], list[Result]]:
    """Each route COLD (every url once), then WARM (the same urls again, shuffled)."""
    rng = random.Random(seed)
    cold, warm = [], []
    for name, urls in routes.items():
        if not urls:
            print(f"{name}: nothing to request in this database, skipped")
            continue
        cold.append(run_wrk(name, base, urls, workdir, concurrency, time_limit))
        again = rng.sample(urls, len(urls))
        warm.append(run_wrk(name, base, again, workdir, concurrency, time_limit))
    return cold, warm


# ----------------------------------------------------------------------------- report


def report(title: str, results: list[Result]) -> None:
    """Per route: latency percentiles, throughput, errors, x-cache shares, p99 as a multiple of
    the reference route's, and the verdict against the target."""
    reference = next(r.p99_ms for r in results if r.name == REFERENCE)
    print(f"\n{title}")
    print(
        f"{'route':<24}{'n':>6}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}{'req/s':>7}"
        f"{'errors':>7}{'hit':>5}{'store':>6}{'p99/ref':>8}  target"
    )
    for r in results:
        target = TARGETS_MS.get(r.name)
        verdict = (
            "" if target is None else f"p99 < {target:.0f} ms " + ("ok" if r.p99_ms < target else "MISSED")
        )
        print(
            f"{r.name:<24}{r.requests:>6}{r.p50_ms:>8.1f}{r.p90_ms:>8.1f}{r.p99_ms:>8.1f}{r.max_ms:>8.1f}"
            f"{r.requests / r.seconds:>7.0f}{r.n_errors:>7}{r.share('hit'):>5.0%}{r.share('store'):>6.0%}"
            f"{r.p99_ms / reference:>8.1f}  {verdict}"
        )
    for r in results:
        if r.n_errors:
            print(f"  {r.name}: errors {', '.join(f'{k} {v}' for k, v in r.errors.items() if v)}")
        if r.issued < r.listed:
            print(f"  {r.name}: stopped by --time-limit after {r.issued} of {r.listed} urls")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--db", type=Path, help="an existing SQLite database (default: build a synthetic one)"
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="urls per route (distinct for data routes)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (wrk connections)")
    parser.add_argument("--time-limit", type=float, default=30, help="seconds per route and phase, at most")
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="uvicorn worker processes"
    )
    parser.add_argument(
        "--live", action="store_true", help="serve with MONOSEMANTIC_STORED_PAGES=0: every page rendered live"
    )
    parser.add_argument("--features", type=int, default=4096, help="features of the synthetic run")
    parser.add_argument(
        "--live-burst", type=int, metavar="N", help="N clients steering while feature pages load"
    )
    parser.add_argument(
        "--while-writing", action="store_true", help="feature pages while `prerender --force` writes"
    )
    parser.add_argument("--seconds", type=float, default=20, help="seconds per stress-mode phase")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="stress modes: BASELINE and stressed phases this many times, alternating (medians printed)",
    )
    parser.add_argument("--page-clients", type=int, default=16, help="stress modes: page-loading clients")
    parser.add_argument(
        "--page-load",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="stress modes: what loads pages and /-/health (auto: wrk if installed, else python)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def database_url(args: argparse.Namespace, tmp: Path) -> str:
    """--db's url, or a synthetic database's built in `tmp`."""
    if args.db:
        return f"sqlite:///{args.db.resolve()}"
    started = time.perf_counter()
    url = build_demo_db(tmp / "bench.db", n_features=args.features, seed=args.seed)
    print(f"built synthetic database in {time.perf_counter() - started:.1f} s")
    return url


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


BURST_TARGETS_MS = {"feature page": 50.0, "health": 20.0}


def cpu_seconds_busy(since: float = 0.0) -> float:
    """CPU seconds the whole machine spent busy (every process, /proc/stat), minus `since`."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system = (int(v) for v in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK") - since


def cpu_model() -> str:
    """The CPU's model name (Linux), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def stress_main(args: argparse.Namespace) -> None:
    """--live-burst / --while-writing: BASELINE, then the stressed phase(s); see the docstring."""
    import asyncio

    import app_burst

    use_wrk = args.page_load == "wrk" or (args.page_load == "auto" and shutil.which("wrk") is not None)
    if use_wrk and shutil.which("wrk") is None:
        raise SystemExit(
            "wrk not found: install Debian's wrk (apt-get install wrk) or use --page-load python"
        )
    generator = (
        f"wrk (pages: -t 1 -c {args.page_clients}; health: {app_burst.HEALTH_CONNECTIONS} connections, "
        "a new one per request, "
        f"{app_burst.HEALTH_DELAY_MS} ms apart)"
        if use_wrk
        else f"the Python generator ({args.page_clients} page clients; health every "
        f"{app_burst.HEALTH_INTERVAL * 1000:.0f} ms; wrk not used)"
    )
    print(f"page load: {generator}")
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp_dir:
        tmp = Path(tmp_dir)
        workdir = tmp if use_wrk else None
        started = time.perf_counter()
        db_url = build_demo_db(tmp / "bench.db", n_features=args.features, seed=args.seed)
        slug = "bench-paper-4096"
        artifacts, sae = app_burst.build_artifacts(tmp / "artifacts", d_sae=args.features, seed=args.seed)
        app_burst.attach_artifacts(db_url, slug, artifacts, sae)
        if app_burst.prerender(db_url, slug).wait() != 0:
            raise SystemExit("prerender failed")
        print(f"built database, artifacts and stored pages in {time.perf_counter() - started:.1f} s")
        rng = random.Random(args.seed)
        paths = [
            f"/runs/{slug}/features/{i}" for i in rng.sample(range(args.features), min(512, args.features))
        ]
        load_before = os.getloadavg()
        cpu_before, wall_before = cpu_seconds_busy(), time.perf_counter()
        proc, base = start_server(db_url, args.workers, False, tmp / "uvicorn.log")
        try:
            if args.live_burst:
                app_burst.warm_up(base, slug)
            phases: list[app_burst.Phase] = []
            writer = [sys.executable, "-m", "monosemantic.cli", "prerender", "--db", db_url, "--run", slug]

            def phase(name: str, seconds: float, **stress: object) -> app_burst.Phase:
                return asyncio.run(
                    app_burst.run_phase(
                        name, base, paths, args.page_clients, seconds, workdir=workdir, **stress
                    )
                )

            for round_ in range(args.rounds):
                suffix = f" #{round_ + 1}" if args.rounds > 1 else ""
                phases.append(phase("BASELINE" + suffix, args.seconds))
                if args.live_burst:
                    live = (slug, args.features, args.live_burst)
                    phases.append(
                        phase(f"BURST ({args.live_burst} steering){suffix}", args.seconds, live=live)
                    )
                if args.while_writing:
                    phases.append(phase("WRITING (prerender)" + suffix, 0, writer=[*writer, "--force"]))
        finally:
            stop_server(proc)
        server_log = log_tail(tmp / "uvicorn.log")
    load_after = os.getloadavg()
    print(
        f"\npage load: {generator}\n{args.workers} uvicorn worker(s), {os.cpu_count()} CPUs "
        f"({cpu_model()}), "
        f"load average (1/5 min) {load_before[0]:.1f}/{load_before[1]:.1f} before, "
        f"{load_after[0]:.1f}/{load_after[1]:.1f} after; phases: "
        + ", ".join(f"{p.name} {p.seconds:.0f} s" for p in phases)
        + f"; CPU seconds of this machine over the run: {cpu_seconds_busy(cpu_before):.0f} of "
        f"{(time.perf_counter() - wall_before) * (os.cpu_count() or 1):.0f}"
    )
    if not app_burst.report(phases, BURST_TARGETS_MS):
        print(f"\ntargets missed or requests failed; the end of uvicorn's output:\n{server_log}")
        sys.exit(1)


def main() -> None:
    args = parse_args()
    if args.live_burst or args.while_writing:
        stress_main(args)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: install Debian's wrk: apt-get install wrk")

    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp_dir:
        tmp = Path(tmp_dir)
        db_url = database_url(args, tmp)
        routes = sample_urls(db_url, args.requests, random.Random(args.seed))
        load_before = os.getloadavg()
        proc, base = start_server(db_url, args.workers, args.live, tmp / "uvicorn.log")
        try:
            cold, warm = load_routes(base, routes, args.concurrency, args.time_limit, args.seed, tmp)
        finally:
            stop_server(proc)
        server_log = log_tail(tmp / "uvicorn.log")

    # Other work on the machine shows in every row; the reference rows and the load average say how much.
    load_after = os.getloadavg()
    pages = "live (MONOSEMANTIC_STORED_PAGES=0)" if args.live else "as configured"
    print(
        f"\n{args.workers} uvicorn worker(s), pages {pages}, {os.cpu_count()} CPUs, load average (1/5 min) "
        f"{load_before[0]:.1f}/{load_before[1]:.1f} before, {load_after[0]:.1f}/{load_after[1]:.1f} after"
    )
    clients = f"{args.concurrency} concurrent clients (wrk -t 1 -c {args.concurrency})"
    report(f"COLD: {clients}, first visit of each url", cold)
    report(f"WARM: {clients}, the same urls again", warm)
    if any(r.n_errors for r in cold + warm):
        print(f"\nrequests failed; the end of uvicorn's output:\n{server_log}")
        sys.exit(1)


if __name__ == "__main__":
    main()
