"""`monosemantic case-studies`: the paper's case studies on an analysed SAE run, stored beside it.

`run_case_studies` reads a complete SAE run from the database, loads its model and SAE from the
run's artifacts, scores the same held-out tokens the run analysed with every proxy
(trainer/analysis/proxies.py), measures them (trainer/analysis/case_studies.py) and replaces the
run's case studies of those names in one transaction (schema: CaseStudy). Nothing else of the
run is touched, so a user's proxy can be added to a run at any time without analysing it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from trainer.analysis.case_studies import Bases, Progress, case_studies
from trainer.analysis.proxies import proxies as make_proxies
from trainer.config import CaseStudyConfig
from trainer.store.schema import CaseStudy, Run, Token


class CaseStudyError(ValueError):
    """A run the case studies cannot be computed on; the message says why."""


@dataclass(frozen=True)
class CaseStudyReport:
    slug: str
    n_tokens: int
    results: dict[str, dict[str, Any]]  # by proxy name, as stored

    def lines(self) -> list[str]:
        out = []
        for name, data in self.results.items():
            if data["status"] == "error":
                out.append(f"{name}: the proxy raised {data['error']}")
            elif data["status"] == "no_match":
                out.append(f"{name}: no token of the {data['n_tokens']:,} held-out tokens matches")
            else:
                parts = [f"{name} ({data['n_positive']:,} tokens):"]
                for kind in ("feature", "neuron"):
                    unit = data.get(kind)
                    if unit:
                        parts.append(
                            f"{kind} {unit['index']} specificity {_pct(unit['specificity'])} "
                            f"sensitivity {_pct(unit['sensitivity'])}"
                        )
                out.append(" ".join(parts[:1]) + " " + "; ".join(parts[1:]))
        return out


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _load(run: Run) -> tuple[Bases, Path]:
    """The run's model and SAE, and its tokens folder (our own one-layer model only, yet)."""
    from trainer.lm.hooks import OneLayerHooked
    from trainer.lm.model import OneLayerTransformer
    from trainer.sae import SparseAutoencoder

    if (run.config or {}).get("model_path"):
        raise CaseStudyError(
            f"run {run.slug!r} studies a transformers model: case studies run on our own model only (yet)"
        )
    if not run.artifacts_path or not run.sae_path:
        raise CaseStudyError(f"run {run.slug!r} records no model or SAE folder to run")
    root = Path(run.artifacts_path)
    model = OneLayerTransformer.load(root / "lm").eval()
    sae = SparseAutoencoder.load(Path(run.sae_path)).eval()
    return Bases(OneLayerHooked(model), sae.encode, sae), root / "tokens"


def store_case_studies(engine: Engine, run_id: int, results: dict[str, dict[str, Any]]) -> None:
    """Replace the run's case studies of these names, in one transaction."""
    with engine.begin() as conn:
        conn.execute(delete(CaseStudy).where(CaseStudy.run_id == run_id, CaseStudy.name.in_(list(results))))
        if results:
            conn.execute(
                insert(CaseStudy),
                [
                    {"run_id": run_id, "name": name, "status": data["status"], "data": data}
                    for name, data in results.items()
                ],
            )


def run_case_studies(
    engine: Engine, slug: str, cfg: CaseStudyConfig, progress: Progress | None = None
) -> CaseStudyReport:
    """Compute and store the case studies of SAE run `slug` (its model's neurons beside its
    features). Raises CaseStudyError, before any work, for a run they cannot be computed on, and
    ProxyError for a user's proxy that cannot be built."""
    from trainer.corpus.tokenizer import load_token_meta, load_token_split

    proxies = make_proxies(cfg.proxies, cfg.builtin)
    if not proxies:
        raise CaseStudyError("no proxy to study: give --proxy, or keep the built-in ones")
    with Session(engine) as session:
        run = session.scalars(select(Run).where(Run.slug == slug)).one_or_none()
        if run is None:
            raise CaseStudyError(f"no run {slug!r} in the database")
        if run.status != "complete":
            raise CaseStudyError(f"run {slug!r} is {run.status}, not complete")
        if run.kind != "sae":
            raise CaseStudyError(
                f"run {slug!r} holds neurons: case studies are run on an SAE run (its model's neurons "
                "are compared beside its features)"
            )
        vocab = list(
            session.scalars(select(Token.raw).where(Token.run_id == run.id).order_by(Token.token_id))
        )
        session.expunge(run)
    bases, tokens_dir = _load(run)
    val = load_token_split(tokens_dir, "val")
    eot_id = int(load_token_meta(tokens_dir)["eot_id"])
    n_ctx = bases.lm.n_ctx
    limit = min(cfg.n_tokens or run.n_tokens_analyzed or len(val), len(val))
    tokens = val[: limit // n_ctx * n_ctx]
    if len(tokens) == 0:
        raise CaseStudyError(f"need at least {n_ctx} held-out tokens; have {len(val)}")
    results = case_studies(bases, tokens, vocab, proxies, cfg, eot_id, progress)
    results = {p.name: results[p.name] for p in proxies}  # the order they were given in
    store_case_studies(engine, run.id, results)
    return CaseStudyReport(slug, len(tokens), results)
