"""Load-test the web app: feature pages and searches, 32 concurrent clients, on loopback.

    python bench/bench_app.py                 # builds a demo-sized synthetic DB in a temp dir
    python bench/bench_app.py --db runs/demo/monosemantic.db --requests 4000

The synthetic database (written through trainer/schema.py) has the demo's shape: 4096 features,
~35 examples of 33 tokens each, a 4096-token vocabulary and its search index. uvicorn runs in a
subprocess on a free 127.0.0.1 port (default min(2, CPUs) workers, like `monosemantic serve`).
Nothing but connections is warmed up: each route is loaded COLD (every url visited for the first
time: the app renders it) and then WARM (the same urls again: from the page cache), each phase
bounded by --requests and --time-limit; p50/p99 are printed beside a reference route's
(/-/health and a static file), since absolute numbers depend on the machine and its load.
Targets: feature page p99 < 50 ms, search < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from trainer.schema import (
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
)

REPO = Path(__file__).resolve().parents[1]
TARGETS_MS = {"feature page": 50.0, "feature JSON": 50.0, "search": 100.0}


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
                        "text": raw.decode("utf-8", "replace"),
                        "display": display_token(raw.decode("utf-8", "replace")),
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


# ----------------------------------------------------------------------------- load


@dataclass
class Result:
    name: str
    latencies_ms: list[float]
    errors: int
    seconds: float
    cache_hits: int = 0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def load(
    client: httpx.AsyncClient, name: str, urls: list[str], concurrency: int, time_limit: float
) -> Result:
    """Fetch every url with `concurrency` workers sharing one queue (stopping after `time_limit`
    seconds); latency per request, and how many the server answered from its page cache."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    latencies: list[float] = []
    errors = hits = 0
    deadline = time.perf_counter() + time_limit

    async def worker() -> None:
        nonlocal errors, hits
        while time.perf_counter() < deadline:
            try:
                url = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            try:
                response = await client.get(url)
                await response.aread()
                errors += response.status_code != 200
                hits += response.headers.get("x-cache") == "hit"
            except httpx.HTTPError:
                errors += 1
            latencies.append(1000 * (time.perf_counter() - start))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, latencies, errors, time.perf_counter() - start, hits)


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
        "health (reference)": ["/-/health"] * n,
        "static file (reference)": ["/static/app.css"] * n,
        "feature page": [f"/runs/{slug}/features/{i}" for slug, i in html_features],
        "feature JSON": [f"/api/runs/{slug}/features/{i}" for slug, i in json_features],
        "search": [
            httpx.URL("/search", params={"token": t}).raw_path.decode()
            for t in rng.sample(texts, min(n, len(texts)))
        ],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(db_url: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn on a free loopback port, as `monosemantic serve` runs it (app factory, N workers)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, "DATABASE_URL": db_url})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"uvicorn exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/-/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("uvicorn did not answer within 60 s")


@dataclass
class Phases:
    cold: list[Result]  # first visit of each url, `concurrency` clients
    warm: list[Result]  # the same urls again, shuffled
    serial_cold: list[Result]  # unseen urls one at a time: service time
    serial_warm: list[Result]


async def run_all(
    base: str, routes: dict[str, list[str]], concurrency: int, serial: int, time_limit: float, seed: int
) -> Phases:
    """Only connections are warmed up (on /-/health); then each route cold, then warm."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    phases = Phases([], [], [], [])
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        await load(client, "connections", ["/-/health"] * 4 * concurrency, concurrency, time_limit)
        for name, urls in routes.items():
            loaded, held_back = urls[:-serial] if serial < len(urls) else urls, urls[-serial:]
            phases.cold.append(await load(client, name, loaded, concurrency, time_limit))
            phases.serial_cold.append(await load(client, name, held_back, 1, time_limit))
            again = rng.sample(loaded, len(loaded))
            phases.warm.append(await load(client, name, again, concurrency, time_limit))
            phases.serial_warm.append(await load(client, name, again[:serial], 1, time_limit))
    return phases


def report(title: str, results: list[Result], with_targets: bool) -> None:
    """p50/p99 per route, p99 as a multiple of the first (reference) route's, cache hit share."""
    reference = results[0].pct(0.99)
    print(f"\n{title}")
    print(
        f"{'route':<26}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'req/s':>8}{'errors':>7}"
        f"{'hits':>6}{'p99/ref':>8}  target"
    )
    for r in results:
        target = TARGETS_MS.get(r.name) if with_targets else None
        verdict = (
            "" if target is None else f"p99 < {target:.0f} ms " + ("ok" if r.pct(0.99) < target else "MISSED")
        )
        hits = f"{100 * r.cache_hits / max(1, len(r.latencies_ms)):.0f}%"
        print(
            f"{r.name:<26}{len(r.latencies_ms):>6}{r.pct(0.5):>9.1f}{r.pct(0.99):>9.1f}"
            f"{max(r.latencies_ms, default=float('nan')):>9.1f}{len(r.latencies_ms) / r.seconds:>8.0f}"
            f"{r.errors:>7}{hits:>6}{r.pct(0.99) / reference:>8.1f}  {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--db", type=Path, help="an existing SQLite database (default: build a synthetic one)"
    )
    parser.add_argument("--requests", type=int, default=2000, help="distinct urls per route")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--serial", type=int, default=200, help="requests per route at concurrency 1")
    parser.add_argument("--time-limit", type=float, default=60, help="seconds per route and phase, at most")
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="uvicorn worker processes"
    )
    parser.add_argument("--features", type=int, default=4096, help="features of the synthetic run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        if args.db:
            db_url = f"sqlite:///{args.db.resolve()}"
        else:
            started = time.perf_counter()
            db_url = build_demo_db(Path(tmp) / "bench.db", n_features=args.features, seed=args.seed)
            print(f"built synthetic database in {time.perf_counter() - started:.1f} s")
        routes = sample_urls(db_url, args.requests, random.Random(args.seed))
        load_before = os.getloadavg()
        proc, base = start_server(db_url, args.workers)
        try:
            phases = asyncio.run(
                run_all(base, routes, args.concurrency, args.serial, args.time_limit, args.seed)
            )
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    # Other work on the machine shows in every row; the reference rows and the load average say how much.
    load_after = os.getloadavg()
    machine = (
        f"{args.workers} uvicorn worker(s), {os.cpu_count()} CPUs, load average (1/5 min) "
        f"{load_before[0]:.1f}/{load_before[1]:.1f} before, {load_after[0]:.1f}/{load_after[1]:.1f} after"
    )
    print(f"\n{machine}")
    clients = f"{args.concurrency} concurrent clients"
    report(f"COLD: {clients}, first visit of each url", phases.cold, True)
    report(f"WARM: {clients}, the same urls again", phases.warm, True)
    report("COLD, one client at a time (service time of unseen urls)", phases.serial_cold, False)
    report("WARM, one client at a time", phases.serial_warm, False)
    if any(r.errors for p in (phases.cold, phases.warm, phases.serial_cold, phases.serial_warm) for r in p):
        sys.exit(1)


if __name__ == "__main__":
    main()
