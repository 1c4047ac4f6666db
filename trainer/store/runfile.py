"""A complete run as one portable file (`monosemantic export RUN --format jsonl`) and back into a
database (`monosemantic import FILE`). The layout is documented in docs/export_format.md.

One JSON object per line (UTF-8; gzip-compressed when the name ends in .gz):

    {"format": "monosemantic-run", "version": 2, "run": {...}, "counts": {"token": n, ...}}
    {"type": "token", ...}            one per vocabulary token
    {"type": "feature", ...}          one per feature (or neuron)
    {"type": "example", ...}          one per example window
    {"type": "token_feature", ...}    one per search-index entry
    {"type": "example_effect", ...}   one per example window's ablation effects
    {"type": "interpretation", ...}   one per (feature, explainer): explanation and scores
    {"type": "run_finding", ...}      one per run-level finding
    {"type": "run_link", ...}         one per link between this run and another (both directions)
    {"type": "feature_match", ...}    one per feature match of those links
    {"type": "end", "counts": {...}}  last line: a file without it was cut short

Rows carry the columns of trainer/store/schema.py by name (binary columns as hex or number lists), so
everything a page shows goes through; `import` writes a file in one transaction after reading it
all once, so a bad file leaves the database as it was. Links name their runs by slug: importing
a run restores its links to the runs of those slugs already in the database, so importing every
file of a study, in any order, restores every link. Version 1 files (no newer tables) still import.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

import numpy as np
from sqlalchemy import func, insert, or_, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased

from trainer.store.database import PENDING_MARK, open_database
from trainer.store.schema import (
    Base,
    CaseStudy,
    Example,
    ExampleEffect,
    Feature,
    FeatureMatch,
    Interpretation,
    Run,
    RunFinding,
    RunLink,
    Token,
    TokenFeature,
    pack_activations,
    pack_token_ids,
    unpack_activations,
    unpack_token_ids,
    utcnow,
)

FORMAT = "monosemantic-run"
VERSION = 3
# The run's own tables (rows keyed by run_id), in file order.
TABLES: dict[str, type[Base]] = {
    "token": Token,
    "feature": Feature,
    "example": Example,
    "token_feature": TokenFeature,
    "example_effect": ExampleEffect,
    "interpretation": Interpretation,
    "run_finding": RunFinding,
    "case_study": CaseStudy,
}
ORDER = {
    "token": (Token.token_id,),
    "feature": (Feature.index,),
    "example": (Example.feature_index, Example.kind, Example.band, Example.rank),
    "token_feature": (TokenFeature.token_id, TokenFeature.rank),
    "example_effect": (ExampleEffect.feature_index, ExampleEffect.source_position),
    "interpretation": (Interpretation.feature_index, Interpretation.explainer),
    "run_finding": (RunFinding.key,),
    "case_study": (CaseStudy.name,),
}
# Links between this run and others, after the run's own rows: a link names its runs by slug and
# its matches name their link by the link's id in this file.
LINK_COLUMNS = ("id", "run", "other_run", "relation", "n_tokens", "best_match_histogram", "created_at")
MATCH_COLUMNS = (
    "link",
    "feature_index",
    "rank",
    "other_index",
    "activation_correlation",
    "decoder_cosine",
    "logit_correlation",
)
KINDS = (*TABLES, "run_link", "feature_match")
KINDS_OF_VERSION = {
    1: ("token", "feature", "example", "token_feature"),
    2: tuple(kind for kind in KINDS if kind != "case_study"),
    3: KINDS,
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
        elif table is ExampleEffect and name == "effects":  # NaN (no next token) as null: JSON has no NaN
            value = [None if math.isnan(v) else v for v in unpack_activations(bytes(value)).tolist()]
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
    elif table is ExampleEffect:
        values = [math.nan if v is None else float(v) for v in row["effects"]]
        out["effects"] = pack_activations(np.asarray(values, dtype=np.float32))
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


def run_links(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """The links from and to a run whose both runs are complete, in the file's layout."""
    mine, theirs = aliased(Run), aliased(Run)
    rows = conn.execute(
        select(
            RunLink.id,
            mine.slug.label("run"),
            theirs.slug.label("other_run"),
            RunLink.relation,
            RunLink.n_tokens,
            RunLink.best_match_histogram,
            RunLink.created_at,
        )
        .join(mine, mine.id == RunLink.run_id)
        .join(theirs, theirs.id == RunLink.other_run_id)
        .where(
            or_(RunLink.run_id == run_id, RunLink.other_run_id == run_id),
            mine.status == "complete",
            theirs.status == "complete",
        )
        .order_by(RunLink.id)
    )
    return [_to_json(RunLink, dict(row)) for row in rows.mappings()]


def feature_matches(conn: Connection, link_id: int) -> Iterator[dict[str, Any]]:
    """One link's matches, in the file's layout."""
    result = conn.execution_options(yield_per=BATCH_ROWS).execute(
        select(FeatureMatch.__table__)
        .where(FeatureMatch.link_id == link_id)
        .order_by(FeatureMatch.feature_index, FeatureMatch.rank)
    )
    for row in result.mappings():
        yield {"link": link_id, **{k: v for k, v in row.items() if k != "link_id"}}


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
        links = run_links(conn, run["id"])
        counts["run_link"] = len(links)
        counts["feature_match"] = int(
            conn.execute(
                select(func.count())
                .select_from(FeatureMatch)
                .where(FeatureMatch.link_id.in_([link["id"] for link in links]))
            ).scalar_one()
        )
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
                for link in links:
                    out.write(json.dumps({"type": "run_link", **link}, ensure_ascii=False) + "\n")
                for link in links:
                    for match in feature_matches(conn, link["id"]):
                        out.write(json.dumps({"type": "feature_match", **match}) + "\n")
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
    version: int


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
    version = header.get("version")
    if version not in KINDS_OF_VERSION:
        raise _fail(
            path,
            1,
            f"format version {version!r}, this tool reads versions "
            f"{', '.join(map(str, KINDS_OF_VERSION))} (upgrade it)",
        )
    assert isinstance(version, int)  # nosec B101  # narrows the type for mypy
    run, counts = header.get("run"), header.get("counts")
    if (
        not isinstance(run, dict)
        or not isinstance(counts, dict)
        or set(counts) != set(KINDS_OF_VERSION[version])
    ):
        raise _fail(path, 1, "the header lacks its run or counts")
    unknown = set(run) - set(_columns(Run, RUN_SKIPPED))
    if unknown:
        raise _fail(path, 1, f"unknown run field(s) {', '.join(sorted(unknown))}")
    full_counts = dict.fromkeys(KINDS, 0) | {k: int(v) for k, v in counts.items()}
    return RunFile(path, run, full_counts, version)


def _columns_of(kind: str) -> list[str]:
    if kind == "run_link":
        return list(LINK_COLUMNS)
    if kind == "feature_match":
        return list(MATCH_COLUMNS)
    return _columns(TABLES[kind], ROW_SKIPPED)


def _check_row(
    path: Path, number: int, row: dict[str, Any], kinds: tuple[str, ...]
) -> tuple[str, dict[str, Any]]:
    kind = row.pop("type", None)
    if kind not in kinds:
        raise _fail(path, number, f"unknown row type {kind!r}")
    columns = _columns_of(kind)
    if set(row) != set(columns):
        missing, extra = set(columns) - set(row), set(row) - set(columns)
        raise _fail(path, number, f"{kind} row: missing {sorted(missing)}, unknown {sorted(extra)}")
    if kind in ("run_link", "feature_match"):
        return kind, row
    try:
        return kind, _from_json(TABLES[kind], row)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _fail(path, number, f"{kind} row: bad value ({exc})") from exc


def read_run_file(path: Path) -> tuple[RunFile, Iterator[tuple[str, dict[str, Any]]]]:
    """The file's header and an iterator over its rows ((kind, column values)), each checked; the
    iterator raises RunFileError on a bad row, a link that is not this run's, a match of a link
    not declared before it, a wrong count or a missing end line."""
    path = Path(path)
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise RunFileError(f"{path} is empty; nothing was imported")
    header = _check_header(path, first[1])
    own_slug = header.run.get("slug")

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        seen = dict.fromkeys(KINDS, 0)
        links: set[Any] = set()
        number = 1
        for number, row in lines:
            if row.get("type") == "end":
                stated = dict.fromkeys(KINDS, 0) | (row.get("counts") or {})
                if seen != header.counts or stated != header.counts:
                    raise _fail(path, number, f"row counts {seen} differ from the header's {header.counts}")
                if next(lines, None) is not None:
                    raise _fail(path, number + 1, "rows after the end line")
                return
            kind, values = _check_row(path, number, row, KINDS_OF_VERSION[header.version])
            if kind == "run_link":
                if own_slug not in (values["run"], values["other_run"]):
                    raise _fail(path, number, f"run_link row: neither end is this run ({own_slug!r})")
                links.add(values["id"])
            elif kind == "feature_match" and values["link"] not in links:
                raise _fail(
                    path, number, f"feature_match row: link {values['link']!r} is not declared before it"
                )
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


def _restore_link(conn: Connection, link: dict[str, Any], own: tuple[str, int]) -> int | None:
    """Insert a link between the imported run (`own`: its slug in the file, its new id) and a
    complete run of the other slug; None, and nothing written, if that run is not in the database
    (yet: its own import brings the link) or the link is there already."""
    ends = []
    for slug in (link["run"], link["other_run"]):
        run_id = (
            own[1]
            if slug == own[0]
            else conn.execute(select(Run.id).where(Run.slug == slug, Run.status == "complete")).scalar()
        )
        if run_id is None:
            return None
        ends.append(int(run_id))
    present = conn.execute(
        select(RunLink.id).where(
            RunLink.run_id == ends[0], RunLink.other_run_id == ends[1], RunLink.relation == link["relation"]
        )
    ).first()
    if present is not None:
        return None
    values = {
        "run_id": ends[0],
        "other_run_id": ends[1],
        "relation": link["relation"],
        "n_tokens": link["n_tokens"],
        "best_match_histogram": link["best_match_histogram"],
        "created_at": _time(link["created_at"]) or utcnow(),
    }
    return int(conn.execute(insert(RunLink).values(**values).returning(RunLink.id)).scalar_one())


def import_jsonl(path: Path, db_url: str, slug: str | None = None) -> tuple[str, dict[str, int]]:
    """Read a run file into the database at `db_url` as run `slug` (default: the file's), in one
    transaction, after checking the whole file; returns (slug, rows written of each kind: links
    only where both runs are in the database). A run of that slug already in the database is
    refused, not replaced. Example ids are kept where they are free."""
    header, rows = read_run_file(path)
    example_ids: tuple[int, int] | None = None
    for kind, values in rows:  # the whole file first: a bad one never reaches the database
        if kind == "example":
            low, high = example_ids or (values["id"], values["id"])
            example_ids = (min(low, values["id"]), max(high, values["id"]))
    file_slug = str(header.run.get("slug") or "")
    slug = slug or file_slug
    if not slug or PENDING_MARK in slug:
        raise RunFileError(f"{path}: run name {slug!r} cannot be used; pass --run-name")
    written = dict.fromkeys(KINDS, 0)
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
            link_ids: dict[Any, int] = {}  # the file's link id -> the database's
            _, rows = read_run_file(path)
            while batch := list(islice(rows, BATCH_ROWS)):
                for kind in TABLES:
                    same = [{**row, "run_id": run_id} for k, row in batch if k == kind]
                    if kind == "example" and not keep_ids:
                        for row in same:
                            del row["id"]  # the database numbers them
                    if same:
                        conn.execute(insert(TABLES[kind]), same)
                        written[kind] += len(same)
                for link in (row for k, row in batch if k == "run_link"):
                    new_id = _restore_link(conn, link, (file_slug, run_id))
                    if new_id is not None:
                        link_ids[link["id"]] = new_id
                        written["run_link"] += 1
                matches = [
                    {**{k: v for k, v in row.items() if k != "link"}, "link_id": link_ids[row["link"]]}
                    for k, row in batch
                    if k == "feature_match" and row["link"] in link_ids
                ]
                if matches:
                    conn.execute(insert(FeatureMatch), matches)
                    written["feature_match"] += len(matches)
            if keep_ids:
                _advance_id_sequence(conn)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise RunFileError(f"{path}: the database refused a row ({reason}); nothing was imported") from exc
    finally:
        engine.dispose()
    return slug, written
