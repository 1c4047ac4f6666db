"""Token search: which features and neurons of complete runs fire most on a token.

Every statement is built once, with bound parameters, so a search costs the database's work and
SQLAlchemy's cached execution, not the building and compiling of expressions (which was most of
a search's time). Prefix search is a range on the indexed text column (LIKE would not use the
index); hits are read run by run on the search index's primary key (run_id, token_id, rank).
"""

from __future__ import annotations

from sqlalchemy import Select, and_, bindparam, select
from sqlalchemy.orm import Session

from app import links
from app.models import SearchHit, SearchMode, SearchResult, TokenMatch
from app.queries.runs import NotFoundError, get_run, token_out
from trainer.store.schema import Feature, Run, Token, TokenFeature

SEARCH_TOKENS_MAX = 200  # vocabulary tokens a prefix search may expand to
SEARCH_HITS_DEFAULT = 100
PREFIX_END = "\U0010ffff"  # the largest code point: text < prefix + PREFIX_END covers the prefix


def _token_statement(mode: SearchMode, one_run: bool) -> Select[int, str, str, int, bytes, str, str]:
    text_match = (
        Token.text == bindparam("text")
        if mode == "exact"
        else and_(Token.text >= bindparam("text"), Token.text < bindparam("text_end"))
    )
    run_match = Run.slug == bindparam("slug") if one_run else Run.status == "complete"
    return (
        select(Run.id, Run.slug, Run.kind, Token.token_id, Token.raw, Token.text, Token.display)
        .join(Run, Run.id == Token.run_id)
        .where(text_match, run_match)
        .order_by(Token.text, Run.slug)
        .limit(SEARCH_TOKENS_MAX)
    )


_TOKEN_STATEMENTS = {
    (mode, one_run): _token_statement(mode, one_run)
    for mode in ("exact", "prefix")
    for one_run in (False, True)
}
_HITS_STATEMENT = (
    select(
        TokenFeature.token_id,
        TokenFeature.feature_index,
        TokenFeature.mean_activation,
        TokenFeature.count,
        Feature.label,
        Feature.density,
    )
    .outerjoin(
        Feature, and_(Feature.run_id == TokenFeature.run_id, Feature.index == TokenFeature.feature_index)
    )
    .where(
        TokenFeature.run_id == bindparam("run_id"),
        TokenFeature.token_id.in_(bindparam("token_ids", expanding=True)),
    )
    .order_by(TokenFeature.mean_activation.desc(), TokenFeature.feature_index)
    .limit(bindparam("limit"))
)
_COMPLETE_SLUGS = select(Run.slug).where(Run.status == "complete").order_by(Run.slug)


def complete_run_slugs(session: Session) -> list[str]:
    return list(session.scalars(_COMPLETE_SLUGS))


def search(
    session: Session,
    token: str | None,
    mode: SearchMode = "exact",
    run_slug: str | None = None,
    limit: int = SEARCH_HITS_DEFAULT,
) -> SearchResult:
    """Features and neurons of complete runs that fire most on the tokens matching `token`,
    strongest first (ties by run, then index); `truncated` when more hits or tokens exist."""
    if run_slug is not None:
        run = get_run(session, run_slug)
        if run.status != "complete":
            raise NotFoundError(f"Run {run_slug!r} is not complete yet ({run.status}).")
    empty = SearchResult(token=token, mode=mode, run=run_slug, matches=[], hits=[], truncated=False)
    if not token:
        return empty

    params = {"text": token, "text_end": token + PREFIX_END, "slug": run_slug}
    token_rows = session.execute(_TOKEN_STATEMENTS[(mode, run_slug is not None)], params).all()
    if not token_rows:
        return empty
    matches = [
        TokenMatch(run=slug, token=token_out(tid, raw, text, display))
        for _rid, slug, _kind, tid, raw, text, display in token_rows
    ]
    runs: dict[int, tuple[str, str]] = {}  # run id -> (slug, kind)
    tokens = {}  # (run id, token id) -> its TokenOut
    for row, match in zip(token_rows, matches, strict=True):
        runs[row[0]] = (row[1], row[2])
        tokens[(row[0], row[3])] = match.token

    # The strongest limit + 1 hits of each run hold the strongest limit + 1 of all runs.
    candidates = []
    for run_id in runs:
        token_ids = [tid for rid, tid in tokens if rid == run_id]
        rows = session.execute(
            _HITS_STATEMENT, {"run_id": run_id, "token_ids": token_ids, "limit": limit + 1}
        )
        candidates += [(run_id, *row) for row in rows]
    candidates.sort(key=lambda hit: (-hit[3], hit[0], hit[2]))  # mean activation, run id, index

    hits = []
    for run_id, token_id, feature_index, mean_activation, count, label, density in candidates[:limit]:
        slug, kind = runs[run_id]
        hits.append(
            SearchHit(
                run=slug,
                kind=kind,
                token=tokens[(run_id, token_id)],
                feature_index=feature_index,
                label=label or "",
                density=density,
                mean_activation=mean_activation,
                count=count,
                url=links.feature_url(slug, feature_index),
            )
        )
    return SearchResult(
        token=token,
        mode=mode,
        run=run_slug,
        matches=matches,
        hits=hits,
        truncated=len(candidates) > limit or len(token_rows) >= SEARCH_TOKENS_MAX,
    )
