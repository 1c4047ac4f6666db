"""Databases for the app tests, small but complete, written through trainer/store/schema.py.

`fixture_db`: two complete runs over one real tokenizer and model (an 'sae' run with a saved
SAE and a 'neurons' run, so live inference works) and one running run. Their vocabulary holds
" the", "the", "\\n" and byte tokens that are not valid UTF-8 on their own.
`hostile_db`: a run whose labels and token texts are XSS payloads and invisible characters.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from sqlalchemy.orm import Session

from trainer.config import ModelConfig, SAEConfig, TokenizerConfig
from trainer.corpus.tokenizer import token_bytes, train_tokenizer
from trainer.lm.model import OneLayerTransformer
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

REPO = Path(__file__).resolve().parents[2]
SAE_RUN, NEURON_RUN, RUNNING_RUN, HOSTILE_RUN = (
    "tiny-paper-64",
    "tiny-neurons",
    "tiny-topk-64~pending-1f2e",
    "hostile",
)
N_SAE, N_NEURONS = 64, 32
WINDOW = 12
XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
    "\u202eevil\u202c",
    "zero\u200bwidth",
]

CORPUS = [
    "the cat sat on the mat. The dog saw the cat and the bird.\n",
    "def the_function(x):\n    return x + 1\n",
    "In the beginning the theory was the best of the themes.\n",
    "Привет, как дела? Это тест the.\n",
    "GET /index.html HTTP/1.1\nHost: example.com\n",
] * 20


@dataclass(frozen=True)
class FixtureDB:
    url: str
    path: Path
    artifacts: Path | None


def _vocab_rows(run_id: int, raws: list[bytes]) -> list[Token]:
    rows = []
    for token_id, raw in enumerate(raws):
        text = token_text(raw)
        rows.append(Token(run_id=run_id, token_id=token_id, raw=raw, text=text, display=display_token(text)))
    return rows


def _features(
    run_id: int,
    n: int,
    vocab: int,
    rng: np.random.Generator,
    labels: list[str] | None = None,
    stream: np.ndarray | None = None,
) -> list[object]:
    """Features with histograms, bands, logit tables, neighbours, examples and the search index."""
    rows: list[object] = []
    for index in range(n):
        max_act = float(1 + index % 7 + rng.random())
        band_edges = [max_act * i / 4 for i in range(5)]  # 4 interval bands
        edges = np.linspace(0, max_act, 11).tolist()
        label = labels[index % len(labels)] if labels else f"tokens like #{index} (synthetic)"
        if index == 3:
            label = ""  # a feature without a label yet
        pool = np.unique(stream) if stream is not None else np.arange(vocab)
        logit_ids = rng.choice(pool, size=10, replace=False).tolist()
        rows.append(
            Feature(
                run_id=run_id,
                index=index,
                density=float(10 ** rng.uniform(-5, -1)),
                max_activation=max_act,
                mean_activation=max_act / 3,
                label=label,
                label_source="human" if index == 1 else "auto",
                activation_histogram={"edges": edges, "counts": rng.integers(0, 200, 10).tolist()},
                band_edges=band_edges,
                top_tokens=[
                    {"token_id": int(t), "count": int(50 - i), "mean_activation": max_act / (i + 1)}
                    for i, t in enumerate(logit_ids[:5])
                ],
                logit_positive=[
                    {"token_id": int(t), "value": 1.0 / (i + 1)} for i, t in enumerate(logit_ids[:5])
                ],
                logit_negative=[
                    {"token_id": int(t), "value": -1.0 / (i + 1)} for i, t in enumerate(logit_ids[5:])
                ],
                logit_histogram={
                    "edges": np.linspace(-1, 1, 21).tolist(),
                    "counts": rng.integers(0, 50, 20).tolist(),
                },
                neighbours=[{"index": (index + k) % n, "cosine": 0.9 - 0.1 * k} for k in (1, 2, 3)],
                map_x=float(index % 8),  # a grid: every feature at its own place on the map
                map_y=float(index // 8),
            )
        )
        kinds = [("top", None, r) for r in range(5)] + [
            ("interval", b, r) for b in range(4) for r in range(2)
        ]
        for kind, band, rank in kinds:
            if stream is not None:  # windows of real text read better than random ids
                start = int(rng.integers(0, len(stream) - WINDOW))
                ids = stream[start : start + WINDOW]
            else:
                ids = rng.integers(0, vocab, WINDOW)
            acts = np.maximum(rng.normal(0, max_act / 3, WINDOW), 0)
            focus = 8
            acts[focus] = max_act * (1 - 0.1 * rank) if kind == "top" else band_edges[band or 0] + 0.01
            rows.append(
                Example(
                    run_id=run_id,
                    feature_index=index,
                    kind=kind,
                    band=band,
                    rank=rank,
                    max_activation=float(acts[focus]),
                    focus_position=focus,
                    token_ids=pack_token_ids(ids),
                    activations=pack_activations(acts),
                    source_position=int(rng.integers(0, 10_000)),
                )
            )
    for token_id in range(vocab):
        for rank in range(3):
            rows.append(
                TokenFeature(
                    run_id=run_id,
                    token_id=token_id,
                    rank=rank,
                    feature_index=int((token_id * 7 + rank * 13) % n),
                    mean_activation=float(3 - rank + rng.random()),
                    count=int(10 - rank),
                )
            )
    return rows


def _run(slug: str, kind: str, n: int, status: str = "complete", **extra: object) -> Run:
    return Run(
        slug=slug,
        kind=kind,
        status=status,
        model_name="tiny-lm",
        variant="neurons" if kind == "neurons" else "paper",
        d_in=32,
        n_features=n,
        n_tokens_analyzed=20_000,
        config={"preset": "tiny", "sae": {"d_sae": n}},
        metrics={"l0": 12.5, "dead_fraction": 0.03, "fvu": 0.21, "ce_loss_recovered": 0.87, "mse": 0.01},
        density_histogram={"edges": np.linspace(-6, 0, 13).tolist(), "counts": list(range(12)), "n_zero": 2},
        training_log={
            "sae": [{"step": s, "mse": 1 / (s + 1), "l0": 40 - s} for s in range(0, 30, 5)],
            "lm": [{"step": s, "train_loss": 6 - s / 10, "val_loss": 6.1 - s / 10} for s in range(0, 30, 5)],
        },
        **extra,
    )


def build_artifacts(root: Path) -> tuple[list[bytes], int, np.ndarray]:
    """A real tokenizer, model and SAE in `root` (tokenizer.json, lm/, sae/); returns the vocab
    bytes, its size and the corpus as a token stream."""
    from trainer.sae import SparseAutoencoder

    torch.manual_seed(0)  # the same weights whichever tests ran before this session fixture
    tokenizer = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=300))
    root.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(root / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    cfg = ModelConfig(vocab_size=vocab, n_ctx=16, d_model=16, n_heads=2, d_mlp=N_NEURONS)
    OneLayerTransformer(cfg).save(root / "lm")
    SparseAutoencoder(SAEConfig(d_in=N_NEURONS, d_sae=N_SAE, batch_size=8, n_tokens=8)).save(root / "sae")
    stream = np.asarray([i for text in CORPUS[:5] for i in tokenizer.encode(text).ids])
    return token_bytes(tokenizer), vocab, stream


def build_fixture_db(directory: Path, url: str | None = None) -> FixtureDB:
    """The fixture runs in `url` (default: SQLite at directory/fixture.db), artifacts in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fixture.db"
    url = url or f"sqlite:///{path}"
    artifacts = directory / "artifacts"
    raws, vocab, stream = build_artifacts(artifacts)
    assert b" the" in raws and b"the" in raws and b"\n" in raws, (
        "fixture tokenizer lacks the tokens tests need"
    )
    engine = make_engine(url)
    ensure_schema(engine)
    rng = np.random.default_rng(0)
    with Session(engine) as session:
        sae = _run(SAE_RUN, "sae", N_SAE, artifacts_path=str(artifacts), sae_path=str(artifacts / "sae"))
        neurons = _run(NEURON_RUN, "neurons", N_NEURONS, artifacts_path=str(artifacts))
        running = _run(RUNNING_RUN, "sae", N_SAE, status="running")
        session.add_all([sae, neurons, running])
        session.flush()
        for run, n in ((sae, N_SAE), (neurons, N_NEURONS)):
            session.add_all(_vocab_rows(run.id, raws))
            session.add_all(_features(run.id, n, vocab, rng, stream=stream))  # type: ignore[arg-type]
        session.commit()
    engine.dispose()
    return FixtureDB(url=url, path=path, artifacts=artifacts)


def build_hostile_db(directory: Path) -> FixtureDB:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hostile.db"
    url = f"sqlite:///{path}"
    raws = (
        [p.encode() for p in XSS_PAYLOADS]
        + [b" the", b"the", b"\n", b"\xe2\x80"]
        + [f"w{i}".encode() for i in range(40)]
    )
    engine = make_engine(url)
    ensure_schema(engine)
    with Session(engine) as session:
        run = _run(HOSTILE_RUN, "sae", 8)
        run.model_name = XSS_PAYLOADS[1]
        run.error = XSS_PAYLOADS[0]
        session.add(run)
        session.flush()
        session.add_all(_vocab_rows(run.id, raws))
        rows = _features(run.id, 8, len(raws), np.random.default_rng(1), labels=XSS_PAYLOADS)
        for row in rows:  # every example starts with the payload tokens
            if isinstance(row, Example):
                ids = np.arange(WINDOW) % len(XSS_PAYLOADS)
                row.token_ids = pack_token_ids(ids)
        session.add_all(rows)  # type: ignore[arg-type]
        session.commit()
    engine.dispose()
    return FixtureDB(url=url, path=path, artifacts=None)


# ----------------------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(db: FixtureDB, workers: int = 2) -> tuple[subprocess.Popen[bytes], str]:
    """`monosemantic serve` as a user runs it (several worker processes) on a free loopback port."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": db.url}
    command = [sys.executable, "-m", "monosemantic.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([*command, "--workers", str(workers)], cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"monosemantic serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/-/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("monosemantic serve did not start within 30 s")
