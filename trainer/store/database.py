"""Writing runs into the database (trainer/store/schema.py) so that a run only ever appears complete.

Protocol: `create_pending_run` inserts the Run as status 'running' under a pending slug
('<slug>~pending-<host>-<pid>-<hex>', naming the writing process); rows are bulk-inserted in
batches, each batch its own transaction; `publish_run` then, in one transaction, deletes any run
already holding the final slug (and the leftovers of earlier attempts: failed ones, and running
ones whose writer on this host is gone) and renames the pending run to the slug with status
'complete'. An exception marks the run 'failed' with its message; a killed process leaves it
'running' under its pending slug, which the app lists as unfinished (never as complete) until
the next publish of that slug removes it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from trainer.store.schema import (
    Base,
    CaseStudy,
    DatabaseError,
    Example,
    ExampleEffect,
    Feature,
    Interpretation,
    Run,
    RunFinding,
    Token,
    TokenFeature,
    ensure_schema,
    make_engine,
    reclaim_free_space,
    utcnow,
)

PENDING_MARK = "~pending-"
SQLITE_FULL = 13  # sqlite3.SQLITE_FULL, the result code of "database or disk is full"
CHILD_TABLES = (ExampleEffect, RunFinding, Example, TokenFeature, Token, Interpretation, Feature, CaseStudy)


def open_database(url: str) -> Engine:
    """An engine on `url` with the current schema: created if empty, migrated if older.
    Raises DatabaseError if unreachable or written by a newer version (nothing is changed)."""
    try:
        engine = make_engine(url)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise DatabaseError(f"cannot open database {url!r}: {exc}") from exc
    ensure_schema(engine)
    return engine


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[:8]


def pending_slug(slug: str) -> str:
    return f"{slug}{PENDING_MARK}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _writer_gone(pending: str) -> bool:
    """Whether the process that created the pending run `pending` was on this host and has died
    (killed mid-write: nothing else will finish or fail its run). Unknown writers count as alive."""
    writer = pending.rsplit(PENDING_MARK, 1)[-1].split("-")
    if len(writer) != 3 or writer[0] != _host_tag() or not writer[1].isdigit():
        return False
    try:
        os.kill(int(writer[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's live process
    return False


def create_pending_run(engine: Engine, slug: str, **fields: Any) -> int:
    """Insert a Run with status 'running' under a fresh pending slug; returns its id."""
    if PENDING_MARK in slug:
        raise ValueError(f"slug {slug!r} must not contain {PENDING_MARK!r}")
    with engine.begin() as conn:
        values = {"slug": pending_slug(slug), "status": "running", "created_at": utcnow(), **fields}
        return int(conn.execute(insert(Run).values(**values).returning(Run.id)).scalar_one())


def insert_rows(
    engine: Engine,
    table: type[Base],
    run_id: int,
    rows: Iterable[dict[str, Any]],
    batch_size: int = 2000,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Bulk-insert `rows` (dicts of column values; run_id is added) in batches, one transaction
    each; returns the number of rows. `on_batch(n)` is called after every batch."""
    total = 0
    iterator: Iterator[dict[str, Any]] = iter(rows)
    while batch := [{**row, "run_id": run_id} for row in islice(iterator, batch_size)]:
        with engine.begin() as conn:
            conn.execute(insert(table), batch)
        total += len(batch)
        if on_batch is not None:
            on_batch(len(batch))
    return total


def update_run(engine: Engine, run_id: int, **fields: Any) -> None:
    with engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id).values(**fields))


def _delete_runs(conn: Any, run_ids: list[int]) -> None:
    # Children first: the same on every backend whether or not foreign keys cascade.
    for table in CHILD_TABLES:
        conn.execute(delete(table).where(table.run_id.in_(run_ids)))  # type: ignore[attr-defined]
    conn.execute(delete(Run).where(Run.id.in_(run_ids)))


def publish_run(engine: Engine, run_id: int, slug: str) -> None:
    """In one transaction: replace any run with `slug` (and failed attempts at it, and attempts
    whose process was killed) by this one."""
    with engine.begin() as conn:
        status = conn.execute(select(Run.status).where(Run.id == run_id)).scalar_one_or_none()
        if status != "running":
            raise DatabaseError(
                f"run {run_id} is {status or 'gone'}, not running: cannot publish it as {slug!r}"
            )
        candidates = conn.execute(
            select(Run.id, Run.slug, Run.status).where(
                Run.id != run_id,
                (Run.slug == slug) | Run.slug.startswith(slug + PENDING_MARK, autoescape=True),
            )
        ).all()
        stale = [
            int(other)
            for other, other_slug, other_status in candidates
            if other_slug == slug
            or other_status == "failed"
            or (other_status == "running" and _writer_gone(other_slug))
        ]
        if stale:
            _delete_runs(conn, stale)
        conn.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(slug=slug, status="complete", completed_at=utcnow(), error=None)
        )
    if stale:
        reclaim_free_space(engine)


def mark_failed(engine: Engine, run_id: int, error: str) -> None:
    """Mark a pending run 'failed' with `error`, and drop its partial rows (the Run row stays)."""
    with engine.begin() as conn:
        for table in CHILD_TABLES:
            conn.execute(delete(table).where(table.run_id == run_id))  # type: ignore[attr-defined]
        conn.execute(update(Run).where(Run.id == run_id).values(status="failed", error=error[:10_000]))


def disk_full(exc: BaseException) -> bool:
    """Whether a database error says the disk is full: SQLite's SQLITE_FULL, PostgreSQL's
    disk_full (SQLSTATE 53100)."""
    if not isinstance(exc, SQLAlchemyError):
        return False
    cause = getattr(exc, "orig", None) or exc
    return (
        getattr(cause, "sqlite_errorcode", None) == SQLITE_FULL
        or getattr(cause, "sqlstate", None) == "53100"
        or "database or disk is full" in str(cause)
    )


def _out_of_space(engine: Engine, slug: str) -> OSError:
    where = engine.url.render_as_string(hide_password=True)
    return OSError(
        errno.ENOSPC,
        f"no space left to write run {slug!r} to the database {where}; its earlier runs are kept "
        "(this attempt is not listed as complete): free some space and run the same command again",
    )


@contextmanager
def pending_run(engine: Engine, slug: str, **fields: Any) -> Iterator[int]:
    """Create a pending run, yield its id; publish it if the block succeeds, else mark it failed
    and re-raise (a full disk as a one-line OSError: SQL errors quote their statement)."""
    try:
        run_id = create_pending_run(engine, slug, **fields)
    except SQLAlchemyError as exc:
        if disk_full(exc):
            raise _out_of_space(engine, slug) from exc
        raise
    try:
        yield run_id
    except BaseException as exc:
        _mark_failed_if_possible(engine, run_id, f"{type(exc).__name__}: {exc}")
        if disk_full(exc):
            raise _out_of_space(engine, slug) from exc
        raise
    try:
        publish_run(engine, run_id, slug)
    except SQLAlchemyError as exc:
        if disk_full(exc):
            _mark_failed_if_possible(engine, run_id, f"{type(exc).__name__}: {exc}")
            raise _out_of_space(engine, slug) from exc
        raise


def _mark_failed_if_possible(engine: Engine, run_id: int, error: str) -> None:
    try:
        mark_failed(engine, run_id, error)
    except SQLAlchemyError as exc:
        if disk_full(exc):  # the original error matters more than the bookkeeping one
            _mark_failed_on_full_disk(engine, run_id)


def _mark_failed_on_full_disk(engine: Engine, run_id: int) -> None:
    """mark_failed when the disk is too full for it in one go (PostgreSQL writes the new status
    as a new row version, with new index entries, which can need a new page): the partial rows
    dropped in a transaction of their own, then a short error; if that finds no room either (on
    PostgreSQL deleted rows give their room back only after a VACUUM), the attempt's Run row is
    deleted too. A delete only marks the old row versions, so it needs no new page: the attempt
    ends failed or gone, never left 'running'. The caller reports the error either way."""
    try:
        with engine.begin() as conn:
            for table in CHILD_TABLES:
                conn.execute(delete(table).where(table.run_id == run_id))  # type: ignore[attr-defined]
        try:
            mark_failed(engine, run_id, "the disk was full")
            return
        except SQLAlchemyError as exc:
            if not disk_full(exc):
                return
        with engine.begin() as conn:
            conn.execute(delete(Run).where(Run.id == run_id))
    except SQLAlchemyError:
        pass


def complete_runs(engine: Engine) -> list[tuple[int, str]]:
    """(id, slug) of every complete run, by slug."""
    with engine.connect() as conn:
        rows = conn.execute(select(Run.id, Run.slug).where(Run.status == "complete").order_by(Run.slug)).all()
    return [(int(run_id), str(slug)) for run_id, slug in rows]
