"""Token search against a brute-force reference read straight from the search index table:
the strongest hits merged across runs, in order, truncated at the limit."""

from __future__ import annotations

import pytest
from appdb import NEURON_RUN, FixtureDB
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.queries.token_search import search
from trainer.store.schema import Run, Token, TokenFeature, make_engine


def reference(
    session: Session, token: str, mode: str, run_slug: str | None
) -> list[tuple[str, int, int, float]]:
    """Every (run, token id, feature, mean activation) of the matching tokens, strongest first."""
    runs = {r.id: r for r in session.scalars(select(Run).where(Run.status == "complete"))}
    hits = []
    for entry in session.scalars(select(TokenFeature)):
        run = runs.get(entry.run_id)
        if run is None or (run_slug is not None and run.slug != run_slug):
            continue
        text = session.get(Token, (entry.run_id, entry.token_id))
        assert text is not None
        if text.text == token if mode == "exact" else text.text.startswith(token):
            hits.append((entry.mean_activation, entry.run_id, entry.feature_index, run.slug, entry.token_id))
    hits.sort(key=lambda h: (-h[0], h[1], h[2]))
    return [(slug, tid, index, act) for act, _rid, index, slug, tid in hits]


@pytest.mark.parametrize(
    ("token", "mode", "run", "limit"),
    [
        ("the", "exact", None, 100),
        (" the", "exact", None, 3),  # fewer than the hits of one run: merged and cut
        ("t", "prefix", None, 5),
        ("t", "prefix", None, 500),
        ("t", "prefix", NEURON_RUN, 7),
        ("\n", "exact", None, 100),
    ],
)
def test_search_matches_brute_force(
    fixture_db: FixtureDB, token: str, mode: str, run: str | None, limit: int
) -> None:
    engine = make_engine(fixture_db.url, read_only=True)
    with Session(engine) as session:
        expected = reference(session, token, mode, run)
        result = search(session, token, mode, run, limit)  # type: ignore[arg-type]
    engine.dispose()
    assert expected, "the fixture should have hits for this query"
    got = [(h.run, h.token.id, h.feature_index, h.mean_activation) for h in result.hits]
    assert got == expected[:limit]
    assert result.truncated == (len(expected) > limit)
    assert all(
        m.token.text == token if mode == "exact" else m.token.text.startswith(token) for m in result.matches
    )
