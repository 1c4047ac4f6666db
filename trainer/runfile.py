"""A complete run as one portable file (`monosemantic export RUN --format jsonl`) and back into a
database (`monosemantic import FILE`). The layout is documented in docs/export_format.md.

One JSON object per line (UTF-8; gzip-compressed when the name ends in .gz):

    {"format": "monosemantic-run", "version": 1, "run": {...}, "counts": {"token": n, ...}}
    {"type": "token", ...}            one per vocabulary token
    {"type": "feature", ...}          one per feature (or neuron)
    {"type": "example", ...}          one per example window
    {"type": "token_feature", ...}    one per search-index entry
    {"type": "end", "counts": {...}}  last line: a file without it was cut short

Rows carry the columns of trainer/schema.py by name (binary columns as hex or number lists), so
everything a page shows goes through; `import` writes a file in one transaction after reading it
all once, so a bad file leaves the database as it was.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from trainer.schema import (
    Base,
    Example,
    Feature,
    Run,
    Token,
    TokenFeature,
    pack_activations,
    pack_token_ids,
    unpack_activations,
    unpack_token_ids,
    utcnow,
)
from trainer.store import PENDING_MARK, open_database

FORMAT = "monosemantic-run"
VERSION = 1
TABLES: dict[str, type[Base]] = {
    "token": Token,
    "feature": Feature,
    "example": Example,
    "token_feature": TokenFeature,
}
ORDER = {
    "token": (Token.token_id,),
    "feature": (Feature.index,),
    "example": (Example.feature_index, Example.kind, Example.band, Example.rank),
    "token_feature": (TokenFeature.token_id, TokenFeature.rank),
}
RUN_SKIPPED = ("id", "status")  # a file holds one complete run; the importer numbers it
ROW_SKIPPED = ("run_id",)
BATCH_ROWS = 2000


class RunFileError(ValueError):
    """A run file that cannot be imported; the message names the file, the line and the reason."""


def _columns(table: type[Base], skipped: tuple[str, ...]) -> list[str]:
    return [c.name for c in table.__table__.columns if c.name not in skipped]  # type: ignore[attr-defined]


def _to_json(table: type[Base], row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if table is Token and name == "raw":
            value = bytes(value).hex()
        elif table is Example and name == "token_ids":
            value = unpack_token_ids(bytes(value)).tolist()
        elif table is Example and name == "activations":
            value = unpack_activations(bytes(value)).tolist()
        elif isinstance(value, dt.datetime):  # SQLite hands back our UTC times without their zone
            value = (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).isoformat()
        out[name] = value
    return out


def _from_json(table: type[Base], row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if table is Token:
        out["raw"] = bytes.fromhex(row["raw"])
    elif table is Example:
        out["id"] = int(row["id"])
        out["token_ids"] = pack_token_ids(row["token_ids"])
        out["activations"] = pack_activations(row["activations"])
    return out


def _open_text(path: Path, mode: str, compressed: bool | None = None) -> IO[str]:
    if path.name.endswith(".gz") if compressed is None else compressed:
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


# ----------------------------------------------------------------------------- export


def complete_run(conn: Connection, slug: str) -> dict[str, Any]:
    """The complete run `slug` as a dict of its columns; a one-line error if there is none."""
    row = (
        conn.execute(select(Run.__table__).where(Run.slug == slug, Run.status == "complete"))
        .mappings()
        .first()
    )
    if row is None:
        known = (
            conn.execute(select(Run.slug).where(Run.status == "complete").order_by(Run.slug)).scalars().all()
        )
        raise RunFileError(f"no complete run {slug!r} in the database (runs: {', '.join(known) or 'none'})")
    return dict(row)


def table_rows(conn: Connection, kind: str, run_id: int) -> Iterator[dict[str, Any]]:
    """Rows of one child table of a run, in a stable order, as dicts of their columns."""
    table = TABLES[kind]
    result = conn.execution_options(yield_per=BATCH_ROWS).execute(
        select(table.__table__).where(table.run_id == run_id).order_by(*ORDER[kind])  # type: ignore[attr-defined]
    )
    for row in result.mappings():
        yield {k: v for k, v in row.items() if k not in ROW_SKIPPED}


def export_jsonl(engine: Engine, slug: str, path: Path) -> dict[str, int]:
    """Write run `slug` to `path` (atomically); returns the number of rows of each kind."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with engine.connect() as conn:
        run = complete_run(conn, slug)
        counts = {
            kind: int(
                conn.execute(
                    select(func.count()).select_from(table).where(table.run_id == run["id"])  # type: ignore[attr-defined]
                ).scalar_one()
            )
            for kind, table in TABLES.items()
        }
        header = {
            "format": FORMAT,
            "version": VERSION,
            "run": _to_json(Run, {k: v for k, v in run.items() if k not in RUN_SKIPPED}),
            "counts": counts,
        }
        try:
            with _open_text(partial, "w", compressed=path.name.endswith(".gz")) as out:
                out.write(json.dumps(header, ensure_ascii=False) + "\n")
                for kind, table in TABLES.items():
                    for row in table_rows(conn, kind, run["id"]):
                        out.write(
                            json.dumps({"type": kind, **_to_json(table, row)}, ensure_ascii=False) + "\n"
                        )
                out.write(json.dumps({"type": "end", "counts": counts}) + "\n")
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return counts


# ----------------------------------------------------------------------------- import


@dataclass(frozen=True)
class RunFile:
    path: Path
    run: dict[str, Any]
    counts: dict[str, int]


def _fail(path: Path, line: int, reason: str) -> RunFileError:
    return RunFileError(f"{path} line {line}: {reason}; nothing was imported")


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with _open_text(path, "r") as handle:
            for number, text in enumerate(handle, start=1):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise _fail(
                        path, number, f"not valid JSON ({exc.msg}); the file is corrupt or cut short"
                    ) from exc
                if not isinstance(value, dict):
                    raise _fail(path, number, "not a JSON object")
                yield number, value
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise FileNotFoundError(f"no run file at {path}") from exc
        raise RunFileError(f"{path}: cannot be read ({exc}); nothing was imported") from exc


def _check_header(path: Path, header: dict[str, Any]) -> RunFile:
    if header.get("format") != FORMAT:
        raise _fail(path, 1, f"not a {FORMAT} file (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise _fail(
            path,
            1,
            f"format version {header.get('version')!r}, this tool reads version {VERSION} (upgrade it)",
        )
    run, counts = header.get("run"), header.get("counts")
    if not isinstance(run, dict) or not isinstance(counts, dict) or set(counts) != set(TABLES):
        raise _fail(path, 1, "the header lacks its run or counts")
    unknown = set(run) - set(_columns(Run, RUN_SKIPPED))
    if unknown:
        raise _fail(path, 1, f"unknown run field(s) {', '.join(sorted(unknown))}")
    return RunFile(path, run, {k: int(v) for k, v in counts.items()})


def _check_row(path: Path, number: int, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    kind = row.pop("type", None)
    if kind not in TABLES:
        raise _fail(path, number, f"unknown row type {kind!r}")
    table = TABLES[kind]
    columns = _columns(table, ROW_SKIPPED)
    if set(row) != set(columns):
        missing, extra = set(columns) - set(row), set(row) - set(columns)
        raise _fail(path, number, f"{kind} row: missing {sorted(missing)}, unknown {sorted(extra)}")
    try:
        return kind, _from_json(table, row)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _fail(path, number, f"{kind} row: bad value ({exc})") from exc


def read_run_file(path: Path) -> tuple[RunFile, Iterator[tuple[str, dict[str, Any]]]]:
    """The file's header and an iterator over its rows ((kind, column values)), each checked; the
    iterator raises RunFileError on a bad row, a wrong count or a missing end line."""
    path = Path(path)
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise RunFileError(f"{path} is empty; nothing was imported")
    header = _check_header(path, first[1])

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        seen = dict.fromkeys(TABLES, 0)
        number = 1
        for number, row in lines:
            if row.get("type") == "end":
                if seen != header.counts or row.get("counts") != header.counts:
                    raise _fail(path, number, f"row counts {seen} differ from the header's {header.counts}")
                if next(lines, None) is not None:
                    raise _fail(path, number + 1, "rows after the end line")
                return
            kind, values = _check_row(path, number, row)
            seen[kind] += 1
            yield kind, values
        raise _fail(path, number, "the file ends without its end line (cut short?)")

    return header, rows()


def _time(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _keep_example_ids(conn: Connection, ids: tuple[int, int] | None) -> bool:
    """Whether the file's example ids are free in the database: then they are kept, so that links
    to an example (`#example-<id>`) still work after the move."""
    if ids is None:
        return True
    taken = conn.execute(
        select(func.count()).select_from(Example).where(Example.id.between(*ids))
    ).scalar_one()
    return int(taken) == 0


def _advance_id_sequence(conn: Connection) -> None:
    """PostgreSQL's serial counter does not see explicit ids: move it past them."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "SELECT setval(pg_get_serial_sequence('examples', 'id'), "
                "(SELECT COALESCE(MAX(id), 0) + 1 FROM examples), false)"
            )
        )


def import_jsonl(path: Path, db_url: str, slug: str | None = None) -> tuple[str, dict[str, int]]:
    """Read a run file into the database at `db_url` as run `slug` (default: the file's), in one
    transaction, after checking the whole file; returns (slug, row counts). A run of that slug
    already in the database is refused, not replaced. Example ids are kept where they are free."""
    header, rows = read_run_file(path)
    example_ids: tuple[int, int] | None = None
    for kind, values in rows:  # the whole file first: a bad one never reaches the database
        if kind == "example":
            low, high = example_ids or (values["id"], values["id"])
            example_ids = (min(low, values["id"]), max(high, values["id"]))
    slug = slug or str(header.run.get("slug") or "")
    if not slug or PENDING_MARK in slug:
        raise RunFileError(f"{path}: run name {slug!r} cannot be used; pass --run-name")
    engine = open_database(db_url)
    try:
        with engine.begin() as conn:
            if conn.execute(select(Run.id).where(Run.slug == slug)).first() is not None:
                raise RunFileError(
                    f"the database already has a run {slug!r}; import under another name with --run-name"
                )
            values = {
                **header.run,
                "slug": slug,
                "status": "complete",
                "created_at": _time(header.run.get("created_at")) or utcnow(),
                "completed_at": _time(header.run.get("completed_at")),
            }
            run_id = int(conn.execute(insert(Run).values(**values).returning(Run.id)).scalar_one())
            keep_ids = _keep_example_ids(conn, example_ids)
            _, rows = read_run_file(path)
            while batch := list(islice(rows, BATCH_ROWS)):
                for kind in TABLES:
                    same = [{**row, "run_id": run_id} for k, row in batch if k == kind]
                    if kind == "example" and not keep_ids:
                        for row in same:
                            del row["id"]  # the database numbers them
                    if same:
                        conn.execute(insert(TABLES[kind]), same)
            if keep_ids:
                _advance_id_sequence(conn)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise RunFileError(f"{path}: the database refused a row ({reason}); nothing was imported") from exc
    finally:
        engine.dispose()
    return slug, header.counts
