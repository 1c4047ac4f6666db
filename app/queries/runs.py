"""The query layer: every SQL statement the app runs, with bound parameters only.

Sort columns go through `SORT_COLUMNS`, page sizes are capped at `PAGE_SIZE_MAX`, and each
function returns the response models of `app.models`, so the HTML pages and their JSON twins
are built from the same data.
"""

from __future__ import annotations

import math
import threading
import unicodedata
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import BindParameter, ColumnElement, and_, bindparam, func, inspect, select
from sqlalchemy.orm import Session, defer

from app import links
from app.models import (
    DEFAULT_LOGIT_NOTE,
    ExampleOut,
    FeatureDetail,
    FeatureList,
    FeatureListFilters,
    FeatureRow,
    HeadlineMetrics,
    Histogram,
    IntervalBand,
    LogitEntry,
    MapPoint,
    Neighbour,
    RunDetail,
    RunList,
    RunRef,
    RunSummary,
    SortKey,
    SortOrder,
    TokenOut,
    TopToken,
)
from trainer.store.schema import (
    Example,
    ExampleEffect,
    Feature,
    Run,
    Token,
    TokenFeature,
    unpack_activations,
    unpack_token_ids,
)

PAGE_SIZE_MAX = 200
PAGE_SIZE_DEFAULT = 50

# The only columns a feature list can be sorted by; the index breaks ties so pages are stable.
SORT_COLUMNS: dict[str, Any] = {
    "index": Feature.index,
    "density": Feature.density,
    "max_activation": Feature.max_activation,
    "label": Feature.label,
}


class NotFoundError(LookupError):
    """What was asked for does not exist; the message says what (shown on the 404 page)."""


# Table names per engine, read once: the app never changes the schema of the database it serves,
# and a database from before a table existed is served without what that table holds.
_TABLES: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()


def table_names(session: Session) -> frozenset[str]:
    engine = session.get_bind()
    with _tables_lock:
        names = _TABLES.get(engine)
    if names is None:
        names = frozenset(inspect(session.connection()).get_table_names())
        with _tables_lock:
            _TABLES[engine] = names
    return names


# ----------------------------------------------------------------------------- tokens


def visible(text: str) -> str:
    """Make invisible or direction-changing characters (zero-width, bidi overrides, controls)
    visible as <U+XXXX>, so a token can neither hide nor reorder the text around it."""
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch.isprintable() or unicodedata.category(ch) not in ("Cf", "Cc", "Zl", "Zp")
        else f"<U+{ord(ch):04X}>"
        for ch in text
    )


def quoted(raw: bytes, text: str) -> str:
    """repr-like quoting of a token's exact text ('\\n', ' the'); raw bytes if not valid UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return repr(raw)
    return visible(repr(text))


def token_out(token_id: int, raw: bytes, text: str, display: str) -> TokenOut:
    return TokenOut(id=token_id, text=text, display=visible(display), quoted=quoted(raw, text))


def unknown_token(token_id: int) -> TokenOut:
    return TokenOut(id=token_id, text="", display=f"<{token_id}>", quoted=f"<unknown token {token_id}>")


class Vocabulary(NamedTuple):
    """A run's tokens by id, and their display forms by id (what every example window needs)."""

    tokens: dict[int, TokenOut]
    display: dict[int, str]

    @classmethod
    def of(cls, tokens: dict[int, TokenOut]) -> Vocabulary:
        return cls(tokens, {token_id: token.display for token_id, token in tokens.items()})


# Vocabularies of complete runs, which never change, kept per engine (so per database):
# {engine: {(run id, created_at, completed_at): Vocabulary}}, a few runs each.
_VOCAB_CACHE: weakref.WeakKeyDictionary[Any, OrderedDict[tuple[int, str, str], Vocabulary]] = (
    weakref.WeakKeyDictionary()
)
VOCAB_CACHE_RUNS = 8
_vocab_lock = threading.Lock()


def _complete_vocabulary(session: Session, run: Run) -> Vocabulary:
    key = (run.id, str(run.created_at), str(run.completed_at))
    engine = session.get_bind()
    with _vocab_lock:
        cache = _VOCAB_CACHE.setdefault(engine, OrderedDict())
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    rows = session.execute(
        select(Token.token_id, Token.raw, Token.text, Token.display).where(Token.run_id == run.id)
    ).all()
    vocab = Vocabulary.of({row[0]: token_out(*row) for row in rows})
    with _vocab_lock:
        cache[key] = vocab
        while len(cache) > VOCAB_CACHE_RUNS:
            cache.popitem(last=False)
    return vocab


def load_vocabulary(session: Session, run: Run, token_ids: Iterable[int]) -> Vocabulary:
    """A vocabulary holding at least every token of `token_ids`: a complete run's whole cached
    vocabulary (shared: do not modify), else those tokens in one query. Ids missing from the
    vocabulary get a placeholder."""
    if run.status == "complete":
        vocab = _complete_vocabulary(session, run)
        missing = set(token_ids).difference(vocab.tokens)
        if not missing:
            return vocab
        tokens = {**vocab.tokens, **{t: unknown_token(t) for t in missing}}
        return Vocabulary.of(tokens)
    return Vocabulary.of(load_tokens(session, run, token_ids))


def load_tokens(session: Session, run: Run, token_ids: Iterable[int]) -> dict[int, TokenOut]:
    """Every token of `token_ids`: from the cached vocabulary of a complete run, else in one query.
    Ids missing from the vocabulary get a placeholder."""
    wanted = set(token_ids)
    if not wanted:
        return {}
    if run.status == "complete":
        vocab = _complete_vocabulary(session, run).tokens
        return {t: vocab.get(t) or unknown_token(t) for t in wanted}
    rows = session.execute(
        select(Token.token_id, Token.raw, Token.text, Token.display).where(
            Token.run_id == run.id, Token.token_id.in_(sorted(wanted))
        )
    ).all()
    tokens = {row[0]: token_out(*row) for row in rows}
    for token_id in wanted:
        if token_id not in tokens:
            tokens[token_id] = unknown_token(token_id)
    return tokens


# ----------------------------------------------------------------------------- runs


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def run_summary(run: Run) -> RunSummary:
    metrics = run.metrics or {}
    return RunSummary(
        slug=run.slug,
        kind=run.kind,
        status=run.status,
        model_name=run.model_name,
        variant=run.variant,
        d_in=run.d_in,
        n_features=run.n_features,
        n_tokens_analyzed=run.n_tokens_analyzed,
        created_at=run.created_at,
        completed_at=run.completed_at,
        headline=HeadlineMetrics(
            l0=_number(metrics.get("l0")),
            dead_fraction=_number(metrics.get("dead_fraction")),
            fvu=_number(metrics.get("fvu")),
            ce_loss_recovered=_number(metrics.get("ce_loss_recovered")),
        ),
        url=links.run_url(run.slug),
        api_url=links.run_url(run.slug, api=True),
    )


def run_ref(run: Run) -> RunRef:
    return RunRef(
        slug=run.slug,
        kind=run.kind,
        model_name=run.model_name,
        variant=run.variant,
        n_features=run.n_features,
        url=links.run_url(run.slug),
    )


def list_runs(session: Session) -> RunList:
    """Complete runs (newest first), and the running or failed ones apart."""
    runs = session.scalars(select(Run).order_by(Run.created_at.desc(), Run.id.desc())).all()
    return RunList(
        runs=[run_summary(r) for r in runs if r.status == "complete"],
        unfinished=[run_summary(r) for r in runs if r.status != "complete"],
    )


# A run's training log (~140 kB of JSON on the demo run, ~1.5 ms to decode) is shown only by
# its run page: every other page that looks a run up (each feature page) leaves it unread, and
# `run.training_log` loads it (one query) when it is read.
_RUN_QUERY = select(Run).where(Run.slug == bindparam("slug")).options(defer(Run.training_log))


def get_run(session: Session, slug: str) -> Run:
    run = session.scalars(_RUN_QUERY, {"slug": slug}).one_or_none()
    if run is None:
        raise NotFoundError(f"There is no run {slug!r}.")
    return run


def _histogram(data: dict[str, Any] | None) -> Histogram:
    data = data or {}
    n_zero = data.get("n_zero")
    return Histogram(
        edges=[float(e) for e in data.get("edges", [])],
        counts=[int(c) for c in data.get("counts", [])],
        n_zero=int(n_zero) if isinstance(n_zero, int | float) else None,
    )


def feature_map(session: Session, run: Run, schema_version: int | None) -> list[MapPoint]:
    """The run's feature map, by index; empty for a run without one or a database from before
    maps (`schema_version` < 3: the read-only app does not migrate it)."""
    if (schema_version or 0) < 3:
        return []
    rows = session.execute(
        select(Feature.index, Feature.map_x, Feature.map_y, Feature.label, Feature.density)
        .where(Feature.run_id == run.id, Feature.map_x.is_not(None), Feature.map_y.is_not(None))
        .order_by(Feature.index)
    ).all()
    return [
        MapPoint(index=i, x=x, y=y, label=label, density=density)
        for i, x, y, label, density in rows
        if x is not None and y is not None
    ]


def run_detail(session: Session, run: Run, features: FeatureList, schema_version: int | None) -> RunDetail:
    return RunDetail(
        run=run_summary(run),
        error=run.error,
        config=run.config or {},
        metrics=run.metrics or {},
        density_histogram=_histogram(run.density_histogram),
        training_log=run.training_log or {},
        corpus_manifest=run.corpus_manifest or {},
        features=features,
        feature_map=feature_map(session, run, schema_version),
    )


# ----------------------------------------------------------------------------- feature list


def list_features(
    session: Session,
    run: Run,
    *,
    sort: SortKey = "index",
    order: SortOrder = "asc",
    page: int = 1,
    size: int = PAGE_SIZE_DEFAULT,
    filters: FeatureListFilters | None = None,
) -> FeatureList:
    """One page of a run's features, sorted through the whitelist and filtered."""
    filters = filters or FeatureListFilters()
    size = max(1, min(size, PAGE_SIZE_MAX))
    page = max(1, page)
    column = SORT_COLUMNS[sort]  # KeyError only if a caller bypasses the validated SortKey
    conditions: list[ColumnElement[bool]] = [Feature.run_id == run.id]
    if filters.q:
        conditions.append(Feature.label.contains(filters.q, autoescape=True))
    if filters.density_min is not None:
        conditions.append(Feature.density >= filters.density_min)
    if filters.density_max is not None:
        conditions.append(Feature.density <= filters.density_max)
    if filters.token:
        firing_on_token = (
            select(TokenFeature.feature_index)
            .join(Token, and_(Token.run_id == TokenFeature.run_id, Token.token_id == TokenFeature.token_id))
            .where(TokenFeature.run_id == run.id, Token.text.contains(filters.token, autoescape=True))
        )
        conditions.append(Feature.index.in_(firing_on_token))
    where = and_(*conditions)
    total = session.execute(select(func.count()).select_from(Feature).where(where)).scalar_one()
    ordering = [column.desc() if order == "desc" else column.asc()]
    if sort != "index":
        ordering.append(Feature.index.asc())
    rows = session.execute(
        select(Feature.index, Feature.density, Feature.max_activation, Feature.label, Feature.label_source)
        .where(where)
        .order_by(*ordering)
        .limit(size)
        .offset((page - 1) * size)
    ).all()
    return FeatureList(
        items=[
            FeatureRow(
                index=index,
                density=density,
                max_activation=max_activation,
                label=label,
                label_source=label_source,
                url=links.feature_url(run.slug, index),
            )
            for index, density, max_activation, label, label_source in rows
        ],
        total=total,
        page=page,
        size=size,
        n_pages=max(1, math.ceil(total / size)),
        sort=sort,
        order=order,
        filters=filters,
    )


# ----------------------------------------------------------------------------- one feature


def _ids(entries: Sequence[Any], key: str = "token_id") -> list[int]:
    return [int(e[key]) for e in entries if isinstance(e, dict) and key in e]


# The feature page's statements, built once (building and caching a statement per request cost
# about as much as running it) and run on the session's connection without the ORM layer.
_features, _examples = Feature.__table__, Example.__table__
_RUN_ID: BindParameter[int] = bindparam("run_id")
_INDEX: BindParameter[int] = bindparam("index")
# Columns the page shows; not the map's (a database from before maps has none: schema < 3).
_FEATURE_PAGE_COLUMNS = [c for c in _features.c if c.name not in ("map_x", "map_y")]
_FEATURE_QUERY = select(
    *_FEATURE_PAGE_COLUMNS,
    select(func.max(_features.c.index))
    .where(_features.c.run_id == _RUN_ID, _features.c.index < _INDEX)
    .scalar_subquery()
    .label("previous_index"),
    select(func.min(_features.c.index))
    .where(_features.c.run_id == _RUN_ID, _features.c.index > _INDEX)
    .scalar_subquery()
    .label("next_index"),
).where(_features.c.run_id == _RUN_ID, _features.c.index == _INDEX)
_EXAMPLES_QUERY = (
    select(
        _examples.c.id,
        _examples.c.kind,
        _examples.c.band,
        _examples.c.rank,
        _examples.c.max_activation,
        _examples.c.focus_position,
        _examples.c.source_position,
        _examples.c.token_ids,
        _examples.c.activations,
    )
    .where(_examples.c.run_id == _RUN_ID, _examples.c.feature_index == _INDEX)
    .order_by(_examples.c.kind, _examples.c.band.desc(), _examples.c.rank)
)
_EFFECTS_QUERY = select(ExampleEffect.source_position, ExampleEffect.effects).where(
    ExampleEffect.run_id == _RUN_ID, ExampleEffect.feature_index == _INDEX
)
_LABELS_QUERY = select(_features.c.index, _features.c.label).where(
    _features.c.run_id == _RUN_ID, _features.c.index.in_(bindparam("indices", expanding=True))
)


def get_feature(session: Session, run: Run, index: int) -> FeatureDetail:
    """Everything a feature page shows, in three queries (the feature with the indices before and
    after it, its examples, its neighbours' labels): no per-example queries."""
    connection = session.connection()
    params = {"run_id": run.id, "index": index}
    found = connection.execute(_FEATURE_QUERY, params).one_or_none()
    if found is None:
        unit = "neuron" if run.kind == "neurons" else "feature"
        raise NotFoundError(f"Run {run.slug!r} has no {unit} {index} (it has {run.n_features}).")
    feature = found._mapping
    windows = [
        (row, unpack_token_ids(token_ids).tolist(), unpack_activations(activations).tolist())
        for *row, token_ids, activations in connection.execute(_EXAMPLES_QUERY, params)
    ]
    effects = example_effects(session, params)

    top_tokens, logit_positive, logit_negative = (
        feature["top_tokens"] or [],
        feature["logit_positive"] or [],
        feature["logit_negative"] or [],
    )
    wanted = _ids(top_tokens) + _ids(logit_positive) + _ids(logit_negative)
    for _row, token_ids, _acts in windows:
        wanted.extend(token_ids)
    tokens, display = load_vocabulary(session, run, wanted)

    neighbours_raw = [n for n in feature["neighbours"] or [] if isinstance(n, dict) and "index" in n]
    neighbour_labels = feature_labels(session, run.id, [int(n["index"]) for n in neighbours_raw])

    url = links.feature_url(run.slug, index)
    top_examples: list[ExampleOut] = []
    bands: dict[int, list[ExampleOut]] = {}
    for (
        example_id,
        kind,
        band,
        rank,
        max_activation,
        focus_position,
        source,
    ), token_ids, activations in windows:
        example = ExampleOut(
            id=example_id,
            kind=kind,
            band=band,
            rank=rank,
            max_activation=max_activation,
            focus_position=focus_position,
            token_ids=token_ids,
            tokens=list(map(display.__getitem__, token_ids)),
            activations=activations,
            effects=effects.get(source),
            url=f"{url}#example-{example_id}",  # as links.feature_url(run.slug, index, example=id)
        )
        if kind == "top":
            top_examples.append(example)
        else:
            bands.setdefault(band if band is not None else -1, []).append(example)

    edges = [float(e) for e in feature["band_edges"] or []]

    def edge(i: int) -> float | None:
        return edges[i] if 0 <= i < len(edges) else None

    return FeatureDetail(
        run=run_ref(run),
        index=index,
        unit="Neuron" if run.kind == "neurons" else "Feature",
        label=feature["label"],
        label_source=feature["label_source"],
        density=feature["density"],
        max_activation=feature["max_activation"],
        mean_activation=feature["mean_activation"],
        activation_histogram=_histogram(feature["activation_histogram"]),
        band_edges=edges,
        top_tokens=[
            TopToken(
                token=tokens[int(t["token_id"])],
                count=int(t.get("count", 0)),
                mean_activation=float(t.get("mean_activation", 0.0)),
            )
            for t in top_tokens
            if isinstance(t, dict) and "token_id" in t
        ],
        logit_positive=[
            LogitEntry(token=tokens[int(t["token_id"])], value=float(t.get("value", 0.0)))
            for t in logit_positive
            if isinstance(t, dict) and "token_id" in t
        ],
        logit_negative=[
            LogitEntry(token=tokens[int(t["token_id"])], value=float(t.get("value", 0.0)))
            for t in logit_negative
            if isinstance(t, dict) and "token_id" in t
        ],
        logit_histogram=_histogram(feature["logit_histogram"]),
        logit_effects_note=str((run.metrics or {}).get("logit_effects") or DEFAULT_LOGIT_NOTE),
        neighbours=[
            Neighbour(
                index=int(n["index"]),
                cosine=float(n.get("cosine", 0.0)),
                label=neighbour_labels.get(int(n["index"]), ""),
                url=links.feature_url(run.slug, int(n["index"])),
            )
            for n in neighbours_raw
        ],
        top_examples=top_examples,
        interval_bands=[
            IntervalBand(band=band, low=edge(band), high=edge(band + 1), examples=examples)
            for band, examples in sorted(bands.items(), reverse=True)
        ],
        previous_index=feature["previous_index"],
        next_index=feature["next_index"],
        url=url,
    )


def example_effects(session: Session, params: dict[str, int]) -> dict[int, list[float | None]]:
    """A feature's ablation effects by example focus position (NaN: None); none in a database
    from before them."""
    if ExampleEffect.__tablename__ not in table_names(session):
        return {}
    return {
        source: [value if math.isfinite(value) else None for value in unpack_activations(blob).tolist()]
        for source, blob in session.connection().execute(_EFFECTS_QUERY, params)
    }


def feature_labels(session: Session, run_id: int, indices: Iterable[int]) -> dict[int, str]:
    wanted = sorted(set(indices))
    if not wanted:
        return {}
    rows = session.connection().execute(_LABELS_QUERY, {"run_id": run_id, "indices": wanted})
    return {index: label for index, label in rows}


def feature_label_and_max(
    session: Session, run_id: int, index: int | None
) -> tuple[str | None, float | None]:
    """The label and max activation of the feature a live page shows; (None, None) without one."""
    if index is None:
        return None, None
    found = session.execute(
        select(Feature.label, Feature.max_activation).where(Feature.run_id == run_id, Feature.index == index)
    ).one_or_none()
    return (found.label, found.max_activation) if found is not None else (None, None)
