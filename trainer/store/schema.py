"""The database schema: the one module the trainer writes through and the app reads through.

SQLAlchemy 2.0 typed models. Numeric arrays (per-token activations, token ids) are stored as
little-endian binary blobs (`pack_*` / `unpack_*` below); small structured values (histograms,
logit tables, configs, metrics) as JSON. The JSON layouts are documented on each column, and
nothing outside this module defines a table, a column name or a JSON layout.

Schema changes: bump `SCHEMA_VERSION` and add a function to `MIGRATIONS` (see `ensure_schema`).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.pool import QueuePool

from trainer.extras import MissingExtra, require_extra

SCHEMA_VERSION = 8

RUN_KINDS = ("sae", "neurons")
RUN_STATUSES = ("running", "complete", "failed")
EXAMPLE_KINDS = ("top", "interval")
LINK_RELATIONS = ("sizes", "seeds", "sae-seeds")  # sae-seeds: same model and size, another SAE seed
CASE_STUDY_STATUSES = ("ok", "no_match", "error")


class DatabaseError(RuntimeError):
    """The database cannot be used: unreachable, or written by a newer schema. Message says which."""


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class SchemaInfo(Base):
    __tablename__ = "schema_info"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class Run(Base):
    """One analysed basis of one model: an SAE's features (kind 'sae') or the MLP neurons ('neurons')."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Readable, stable link name. While a run is being written it carries a pending slug
    # ('<slug>~pending-<hex>'); `publish_run` swaps it in when the run is complete.
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # one of RUN_KINDS
    status: Mapped[str] = mapped_column(String(16), index=True)  # one of RUN_STATUSES
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    model_name: Mapped[str] = mapped_column(String(200))  # runs of one model share it
    variant: Mapped[str] = mapped_column(String(32))  # SAE variant, or 'neurons'
    d_in: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)  # d_sae, or d_mlp for a neuron run
    n_tokens_analyzed: Mapped[int] = mapped_column(Integer, default=0)
    # Full RunConfig as written by trainer.config.to_dict.
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # {"mse", "fvu", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_with_sae",
    #  "ce_zero_ablation", "ce_loss_recovered", "lm_val_loss", ...}: floats, any may be missing.
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # {"edges": [float], "counts": [int], "n_zero": int}: log10 feature density.
    density_histogram: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # {"sae": [{"step", "mse", "l1", "l0", "dead", ...}], "lm": [{"step", "train_loss", "val_loss"}]}
    training_log: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # {"sources": [{"name", "kind", "bytes", "licence", "origin"}], "total_bytes", ...}
    corpus_manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Directory holding tokenizer.json and lm/ (the model), for live inference; and the SAE's
    # folder (sae_weights.safetensors + cfg.json) for an 'sae' run.
    artifacts_path: Mapped[str | None] = mapped_column(Text, default=None)
    sae_path: Mapped[str | None] = mapped_column(Text, default=None)

    features: Mapped[list[Feature]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def is_complete(self) -> bool:
        return self.status == "complete"


class Feature(Base):
    """One feature (or neuron) of a run, with everything its page shows except examples."""

    __tablename__ = "features"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    density: Mapped[float] = mapped_column(Float)  # fraction of analysed tokens where it fires
    max_activation: Mapped[float] = mapped_column(Float)
    mean_activation: Mapped[float] = mapped_column(Float)  # mean over the tokens where it fires
    label: Mapped[str] = mapped_column(Text, default="")
    label_source: Mapped[str] = mapped_column(String(16), default="auto")  # 'auto' | 'human'
    # {"edges": [float] (n+1), "counts": [int] (n)}: nonzero activations; interval band b of the
    # examples covers activations in [band_edges[b], band_edges[b+1]).
    activation_histogram: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    band_edges: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # [{"token_id": int, "count": int, "mean_activation": float}], most frequent first.
    top_tokens: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # [{"token_id": int, "value": float}] sorted by value, descending / ascending.
    logit_positive: Mapped[list[Any]] = mapped_column(JSON, default=list)
    logit_negative: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # {"edges": [float], "counts": [int]}: all vocabulary logit weights of the feature.
    logit_histogram: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # [{"index": int, "cosine": float}] nearest other features by decoder cosine similarity.
    neighbours: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Position on the run's feature map (UMAP of feature directions); None if the run has none.
    map_x: Mapped[float | None] = mapped_column(Float, default=None)
    map_y: Mapped[float | None] = mapped_column(Float, default=None)

    run: Mapped[Run] = relationship(back_populates="features")

    __table_args__ = (
        Index("ix_features_run_density", "run_id", "density"),
        Index("ix_features_run_max", "run_id", "max_activation"),
    )


class Example(Base):
    """A context window around one activating token of one feature."""

    __tablename__ = "examples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    feature_index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # 'top' | 'interval'
    band: Mapped[int | None] = mapped_column(Integer, default=None)  # interval band, 0 = lowest
    rank: Mapped[int] = mapped_column(Integer)  # order within (kind, band)
    max_activation: Mapped[float] = mapped_column(Float)  # activation on the focus token
    focus_position: Mapped[int] = mapped_column(Integer)  # index of the focus token in the window
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)  # pack_token_ids([window])
    activations: Mapped[bytes] = mapped_column(LargeBinary)  # pack_activations([window])
    source_position: Mapped[int] = mapped_column(Integer)  # focus token's offset in the analysed stream

    __table_args__ = (Index("ix_examples_feature", "run_id", "feature_index", "kind", "band", "rank"),)


class Token(Base):
    """The vocabulary of a run's tokenizer, with each token's exact text."""

    __tablename__ = "tokens"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    token_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)  # the token's exact bytes
    text: Mapped[str] = mapped_column(Text)  # raw decoded as UTF-8 with replacement
    display: Mapped[str] = mapped_column(Text)  # text with whitespace made visible (display_token)

    __table_args__ = (Index("ix_tokens_text", "text"), Index("ix_tokens_run_text", "run_id", "text"))


class TokenFeature(Base):
    """Search index: for each vocabulary token, the features that fire most on it, ranked."""

    __tablename__ = "token_features"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    token_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0 = strongest
    feature_index: Mapped[int] = mapped_column(Integer)
    mean_activation: Mapped[float] = mapped_column(Float)  # mean over occurrences of the token
    count: Mapped[int] = mapped_column(Integer)  # occurrences on which the feature fired


class ExampleEffect(Base):
    """Ablation effects on one example window (trainer/analysis/ablation.py): per token, the change
    in log p(actual next token) when the feature is removed from the SAE reconstruction at that
    token. Keyed by the window's focus position, so a top example and an interval sample around
    the same token share it. Absent: not computed (a run analysed before effects existed)."""

    __tablename__ = "example_effects"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    feature_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_position: Mapped[int] = mapped_column(Integer, primary_key=True)  # = Example.source_position
    # pack_activations([window]): nats, one per token of the example's window; 0 where the feature
    # does not fire, NaN where the window's last token has no next token.
    effects: Mapped[bytes] = mapped_column(LargeBinary)


class RunFinding(Base):
    """A run-level number set behind one of the paper's claims (the findings page), by key:
    "ablation": {"n_examples", "n_firing_tokens", "helped_share", "median_effect",
    "median_focus_effect", "most_helpful": [{"index", "mean_focus_effect"}]}.
    "interpretability": the medians of the run's local scores ("median_score_top_random", …), "ci":
    {score name: [low, high] bootstrap interval of its median}, "baseline_logit_score" (measured
    chance level) and "baseline_logit_scores": {"random_model", "random_directions"}. Other claims
    add their own key; each documents its layout here."""

    __tablename__ = "run_findings"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Interpretation(Base):
    """A unit's automatic explanation and its interpretability scores (trainer/analysis/interpretability.py).

    `explainer` is 'local' (built from token statistics) or 'llm' (a language model's, scored by
    the same local simulation). Scores are None where undefined (a unit silent on the scoring split).
    """

    __tablename__ = "interpretations"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    feature_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    explainer: Mapped[str] = mapped_column(String(16), primary_key=True)
    explanation: Mapped[str] = mapped_column(Text)  # one line a person can read
    # {"tokens": [{"token_id", "weight"}], "contexts": [{"previous_id" (None: context start),
    #  "token_id", "weight"}], "rest": float, "model"?: str}: what the simulation plays.
    rules: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    score: Mapped[float | None] = mapped_column(Float, default=None)  # correlation, all scoring tokens
    score_top_random: Mapped[float | None] = mapped_column(Float, default=None)  # top windows + random
    logit_score: Mapped[float | None] = mapped_column(
        Float, default=None
    )  # next-token percentile, 0.5 chance
    logit_top_fraction: Mapped[float | None] = mapped_column(Float, default=None)


class CaseStudy(Base):
    """One of the paper's case studies on an SAE run (trainer/analysis/case_studies.py): a concept
    proxy, the feature and the neuron that best track it on held-out text, and pinning them.

    `data` by status: "ok": {"name", "status", "description", "definition", "builtin",
    "n_tokens", "n_positive", "positive_score", "mean_score", "feature": UNIT | None,
    "neuron": UNIT | None, "downstream": {"n_prompts", "n_tokens", "unpinned": float,
    "feature"/"neuron": {"index", "value", "pinned": float} | None, "samples": [{"prompt",
    "unpinned", "feature"?, "neuron"?}]} | {"error"}}; UNIT = {"index", "correlation",
    "specificity", "sensitivity" (None: nothing to divide), "max_activation", "n_firing",
    "n_positive_firing", "thresholds": [{"fraction", "threshold", "n_firing", "share"}],
    "histogram": {"edges" (n+1), "positive" (n), "negative" (n)}}. "no_match": the summary fields
    only (the proxy marked no token). "error": {"name", "status", "error"} (the proxy raised).
    The best neuron is a neuron of the run's model: its page is in that model's neuron run.
    Re-running a case study replaces its row only; the run's other rows never change.
    """

    __tablename__ = "case_studies"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # 'ok' | 'no_match' | 'error'
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class StoredPage(Base):
    """A page of a complete run rendered ahead of time by `monosemantic prerender`: the exact
    body the app would send for `path` (no query string), gzip-compressed.

    The app serves it instead of rendering only while `app_version` equals its own code version
    (a digest of app/ and templates/), so a change to the app never serves an old page. A complete
    run never changes, and its pages go with it (ON DELETE CASCADE) when it is replaced.
    """

    __tablename__ = "stored_pages"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(500), primary_key=True)  # e.g. "/runs/demo/features/7"
    app_version: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(100))
    body_gzip: Mapped[bytes] = mapped_column(LargeBinary)


class RunLink(Base):
    """Run `run_id`'s features matched to run `other_run_id`'s by activation correlation over the
    same tokens: 'sizes' (one model, dictionaries of other sizes: feature splitting) or 'seeds'
    (another model trained from another seed: universality). One row per direction."""

    __tablename__ = "run_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    other_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    relation: Mapped[str] = mapped_column(String(16))  # one of LINK_RELATIONS
    n_tokens: Mapped[int] = mapped_column(Integer)  # tokens the correlations were computed over
    # {"edges": [float], "counts": [int], "median", "mean", "n"}: best-match correlation per feature.
    best_match_histogram: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def linked_sizes(session: Session, run: Run) -> list[Run]:
    """`run` and the complete SAE runs linked to it as other sizes, smallest first."""
    others = session.scalars(
        select(Run)
        .join(RunLink, RunLink.other_run_id == Run.id)
        .where(RunLink.run_id == run.id, RunLink.relation == "sizes", Run.status == "complete")
    ).all()
    return sorted({r.id: r for r in [run, *others]}.values(), key=lambda r: (r.n_features, r.slug))


class FeatureMatch(Base):
    """One of a feature's best matches in the other run of a RunLink (rank 0 = best)."""

    __tablename__ = "feature_matches"
    link_id: Mapped[int] = mapped_column(ForeignKey("run_links.id", ondelete="CASCADE"), primary_key=True)
    feature_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    other_index: Mapped[int] = mapped_column(Integer)
    activation_correlation: Mapped[float] = mapped_column(Float)
    decoder_cosine: Mapped[float | None] = mapped_column(Float, default=None)  # 'sizes' only
    logit_correlation: Mapped[float | None] = mapped_column(Float, default=None)  # logit weights

    __table_args__ = (Index("ix_feature_matches_other", "link_id", "other_index", "rank"),)


class SizeMap(Base):
    """One feature map drawn over the dictionaries of several sizes of one model together (UMAP of
    all their decoder directions at once), so that a feature and its children sit near each other."""

    __tablename__ = "size_maps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    n_points: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SizeMapPoint(Base):
    """A feature of one of a SizeMap's runs, placed on that map."""

    __tablename__ = "size_map_points"
    map_id: Mapped[int] = mapped_column(ForeignKey("size_maps.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    feature_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    map_x: Mapped[float] = mapped_column(Float)
    map_y: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_size_map_points_run", "run_id", "map_id"),)


# ----------------------------------------------------------------------------- arrays


def pack_token_ids(ids: np.ndarray) -> bytes:
    return np.asarray(ids, dtype="<i4").tobytes()


def unpack_token_ids(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<i4")


def pack_activations(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f2").tobytes()


def unpack_activations(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f2").astype(np.float32)


# ----------------------------------------------------------------------------- tokens

_VISIBLE = {" ": "\u00b7", "\n": "\u21b5", "\t": "\u2192", "\r": "\u240d", "\x00": "\u2400"}


def token_text(raw: bytes) -> str:
    """A token's text as stored (`Token.text`): its bytes decoded as UTF-8 with replacement, NUL
    written as \u2400 (PostgreSQL text cannot hold NUL; the exact bytes stay in `Token.raw`)."""
    return raw.decode("utf-8", "replace").replace("\x00", "\u2400")


def display_token(text: str) -> str:
    """A token's text with spaces, newlines, tabs and NUL made visible (· ↵ → ␀)."""
    return "".join(_VISIBLE.get(ch, ch) for ch in text)


# ----------------------------------------------------------------------------- engine


def _require_postgres_driver(url: str) -> None:
    """The URL's PostgreSQL driver is importable, or MissingExtra names the `postgres` extra
    (psycopg; a bare postgresql:// URL means psycopg2 before SQLAlchemy 2.1, which it does not install)."""
    driver = make_url(url).get_driver_name()
    if driver == "psycopg":
        require_extra("psycopg", "postgres", "a PostgreSQL database")
    elif driver == "psycopg2" and importlib.util.find_spec("psycopg2") is None:
        raise MissingExtra(
            "this PostgreSQL URL means the psycopg2 driver, which is not installed: write the URL as "
            "postgresql+psycopg://... and pip install 'monosemantic[postgres]'"
        )


def make_engine(
    url: str, read_only: bool = False, pool_size: int | None = None, pool_timeout: float = 30.0
) -> Engine:
    """An engine for `url`. SQLite read-only connections use `mode=ro` so the app cannot write.
    `pool_size`: a fixed pool of that many connections (no overflow), waited for up to
    `pool_timeout` seconds (SQLAlchemy's default otherwise: 5 + 10 overflow, 30 s)."""
    pool_args: dict[str, Any] = (
        {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": pool_timeout} if pool_size else {}
    )
    if url.startswith("sqlite"):
        if read_only and ":memory:" not in url:
            path = url.split("sqlite:///", 1)[1]
            # A file pool, not the single-connection pool SQLAlchemy picks for "sqlite://".
            engine = create_engine(
                "sqlite://",
                poolclass=QueuePool,
                creator=lambda: __import__("sqlite3").connect(
                    f"file:{path}?mode=ro", uri=True, check_same_thread=False
                ),
                **pool_args,
            )
        else:
            engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            if not read_only:
                # Takes effect in a new database only (before its first table): space freed by
                # replaced runs can then be given back (`reclaim_free_space`).
                cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        _require_postgres_driver(url)
        connect_args["connect_timeout"] = 10
        if read_only:
            connect_args["options"] = "-c default_transaction_read_only=on -c statement_timeout=5000"
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **pool_args)


def reclaim_free_space(engine: Engine) -> None:
    """Give the pages of deleted rows back to the filesystem (SQLite databases created with
    incremental auto-vacuum; elsewhere nothing to do: PostgreSQL's autovacuum reuses them)."""
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()
        try:
            # executescript steps the pragma to its end; execute() would free a single page.
            raw.driver_connection.executescript("PRAGMA incremental_vacuum;")  # type: ignore[union-attr]
        finally:
            raw.close()


def _check_reachable(engine: Engine) -> None:
    try:
        with engine.connect():
            pass
    except (OperationalError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
        raise DatabaseError(
            f"cannot open database {engine.url.render_as_string(hide_password=True)}: {reason}"
        ) from exc


# Migration functions, applied in order: MIGRATIONS[v] upgrades a database from version v to v+1.
def _add_stored_pages(conn: Connection) -> None:
    StoredPage.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _add_feature_map(conn: Connection) -> None:
    present = {column["name"] for column in inspect(conn).get_columns(Feature.__tablename__)}
    for column in ("map_x", "map_y"):
        if column not in present:
            conn.execute(text(f"ALTER TABLE {Feature.__tablename__} ADD COLUMN {column} FLOAT"))


def _add_findings_tables(conn: Connection) -> None:
    for table in (ExampleEffect, RunFinding):
        table.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _add_feature_matches(conn: Connection) -> None:
    for table in (RunLink, FeatureMatch):
        table.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _add_interpretations(conn: Connection) -> None:
    Interpretation.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _add_size_maps(conn: Connection) -> None:
    for table in (SizeMap, SizeMapPoint):
        table.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _add_case_studies(conn: Connection) -> None:
    CaseStudy.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _add_stored_pages,
    2: _add_feature_map,
    3: _add_findings_tables,
    4: _add_feature_matches,
    5: _add_interpretations,
    6: _add_size_maps,
    7: _add_case_studies,
}


def read_schema_version(engine: Engine) -> int | None:
    """The schema version stored in the database, or None if it holds no schema yet."""
    _check_reachable(engine)
    if not inspect(engine).has_table(SchemaInfo.__tablename__):
        return None
    with engine.connect() as conn:
        return conn.execute(select(SchemaInfo.version)).scalar_one_or_none()


def check_schema_version(engine: Engine) -> None:
    """Refuse a database written by a newer version of this tool (nothing is touched)."""
    version = read_schema_version(engine)
    if version is not None and version > SCHEMA_VERSION:
        raise DatabaseError(
            f"database schema version {version} is newer than this tool's ({SCHEMA_VERSION}); "
            "upgrade monosemantic to read it"
        )


def ensure_schema(engine: Engine) -> None:
    """Create the tables in an empty database, migrate an older one, refuse a newer one."""
    check_schema_version(engine)
    version = read_schema_version(engine)
    with engine.begin() as conn:
        if version is None:
            Base.metadata.create_all(conn)
            conn.execute(insert(SchemaInfo).values(id=1, version=SCHEMA_VERSION))
            return
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](conn)
            version += 1
        conn.execute(update(SchemaInfo).values(version=SCHEMA_VERSION))
