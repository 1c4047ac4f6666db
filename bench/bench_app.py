"""Load-test the web app: feature pages and searches, 32 concurrent clients, on loopback.

    python bench/bench_app.py                 # builds a demo-sized synthetic DB in a temp dir
    python bench/bench_app.py --db runs/demo/monosemantic.db --requests 4000

The synthetic database (written through trainer/schema.py) has the demo's shape: 4096 features,
~35 examples of 33 tokens each, a 4096-token vocabulary and its search index. uvicorn runs in a
subprocess on a free 127.0.0.1 port; each route is loaded on its own with a bounded number of
requests, and its p50/p99 are printed beside a reference route's (/-/health and a static file),
since absolute numbers depend on the machine. Targets: feature page p99 < 50 ms, search < 100 ms.
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

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def load(client: httpx.AsyncClient, name: str, urls: list[str], concurrency: int) -> Result:
    """Fetch every url with `concurrency` workers sharing one queue; latency per request."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while True:
            try:
                url = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            try:
                response = await client.get(url)
                await response.aread()
                if response.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(1000 * (time.perf_counter() - start))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, latencies, errors, time.perf_counter() - start)


def sample_urls(db_url: str, n: int, rng: random.Random) -> dict[str, list[str]]:
    engine = make_engine(db_url, read_only=True)
    with Session(engine) as session:
        runs = session.execute(select(Run.slug, Run.n_features).where(Run.status == "complete")).all()
        texts = [t for t in session.scalars(select(Token.text).limit(5000)) if t.strip() and t.isprintable()]
    engine.dispose()
    features = [(slug, rng.randrange(n_features)) for slug, n_features in runs for _ in range(n)]
    rng.shuffle(features)
    return {
        "health (reference)": ["/-/health"] * n,
        "static file (reference)": ["/static/app.css"] * n,
        "feature page": [f"/runs/{slug}/features/{i}" for slug, i in features[:n]],
        "feature JSON": [f"/api/runs/{slug}/features/{i}" for slug, i in features[-n:]],
        "search": [
            httpx.URL("/search", params={"token": rng.choice(texts)}).raw_path.decode() for _ in range(n)
        ],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(db_url: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
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
    ]
    if workers > 1:
        command += ["--workers", str(workers)]
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


async def run_all(
    base: str, routes: dict[str, list[str]], concurrency: int, serial: int
) -> tuple[list[Result], list[Result]]:
    """Each route under `concurrency` clients, then `serial` requests one at a time (service time)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        for urls in routes.values():  # warm up: connections, caches, lazy imports
            await load(client, "warm-up", urls[: 2 * concurrency], concurrency)
        loaded = [await load(client, name, urls, concurrency) for name, urls in routes.items()]
        alone = [await load(client, name, urls[:serial], 1) for name, urls in routes.items()]
    return loaded, alone


def report(title: str, results: list[Result], with_targets: bool) -> None:
    """p50/p99 per route, and p99 as a multiple of the first (reference) route's."""
    reference = results[0].pct(0.99)
    print(f"\n{title}")
    print(
        f"{'route':<26}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'req/s':>9}{'errors':>8}{'p99/ref':>9}  target"
    )
    for r in results:
        target = TARGETS_MS.get(r.name) if with_targets else None
        verdict = (
            "" if target is None else f"p99 < {target:.0f} ms " + ("ok" if r.pct(0.99) < target else "MISSED")
        )
        print(
            f"{r.name:<26}{r.pct(0.5):>9.1f}{r.pct(0.99):>9.1f}{max(r.latencies_ms):>9.1f}"
            f"{len(r.latencies_ms) / r.seconds:>9.0f}{r.errors:>8}{r.pct(0.99) / reference:>9.1f}  {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--db", type=Path, help="an existing SQLite database (default: build a synthetic one)"
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per route")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--serial", type=int, default=200, help="requests per route at concurrency 1")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
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
        proc, base = start_server(db_url, args.workers)
        try:
            loaded, alone = asyncio.run(run_all(base, routes, args.concurrency, args.serial))
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    # Other work on the machine shows in every row; the reference rows and the load average say how much.
    load_average = os.getloadavg()[0]
    machine = f"{args.workers} uvicorn worker(s), {os.cpu_count()} CPUs, load average {load_average:.1f}"
    report(
        f"{args.concurrency} concurrent clients, {args.requests} requests per route; {machine}", loaded, True
    )
    report(f"one client at a time, {args.serial} requests per route (service time)", alone, False)
    if any(r.errors for r in loaded + alone):
        sys.exit(1)


if __name__ == "__main__":
    main()
