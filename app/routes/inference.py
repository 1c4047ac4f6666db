"""Live inference: run a text through a run's model (and SAE) and show its features per token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BeforeValidator, Field
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from app import links
from app.deps import EngineDep, LiveDep
from app.live import inference
from app.live.pool import LiveExecutor, Prepared
from app.models import FeatureActivation, InferenceResult, InferenceToken, blank_is_none
from app.pages.templating import render
from app.queries import runs
from app.responses import LIVE_RESPONSES
from app.routes.runs import RunSlug
from trainer.store.schema import Run

router = APIRouter(tags=["inference"])

TEXT_MAX_CHARS = 2000

TextQuery = Annotated[
    str | None, Query(max_length=TEXT_MAX_CHARS, description="The text to run (cut to the context).")
]
# The page's form: an empty feature box means the strongest feature.
FeatureQuery = Annotated[
    Annotated[int, Field(ge=0, le=100_000_000)] | None,
    BeforeValidator(blank_is_none),
    Query(description="The feature to show over the text; default the strongest."),
]
# The JSON API is not a form: an empty parameter is a bad value (422), not a missing one.
ApiTextQuery = Annotated[
    str, Query(min_length=1, max_length=TEXT_MAX_CHARS, description="The text to run (cut to the context).")
]
ApiFeatureQuery = Annotated[
    int | None,
    Query(ge=0, le=100_000_000, description="The feature to show over the text; default the strongest."),
]


def _prepare(engine: Engine, run: str, text: str | None, feature: int | None) -> Prepared[InferenceResult]:
    with Session(engine) as session:
        record = runs.get_run(session, run)
        if feature is not None and feature >= record.n_features:
            raise runs.NotFoundError(f"Run {run!r} has no feature {feature} (it has {record.n_features}).")
        empty = InferenceResult(
            run=runs.run_ref(record),
            text=text or "",
            available=True,
            message=None,
            truncated=False,
            n_ctx=None,
            tokens=[],
            feature=feature,
            feature_label=None,
            feature_max=None,
        )
        return Prepared(record.id, inference.model_source(record), empty)


def _compute(
    prepared: Prepared[InferenceResult], text: str | None
) -> tuple[int, inference.Activations | None]:
    """The model's part (on the live executor): load the run's artifacts (cached), then run."""
    loaded = inference.load_artifacts(prepared.source)
    if not text:
        return loaded.n_ctx, None
    return loaded.n_ctx, inference.feature_activations(loaded, text)


def _finish(
    engine: Engine,
    prepared: Prepared[InferenceResult],
    text: str,
    feature: int | None,
    n_ctx: int,
    acts: inference.Activations,
) -> InferenceResult:
    per_token = inference.top_features(acts.values)
    if feature is None and acts.values.size:
        feature = int(acts.values.max(axis=0).argmax())
    slug = prepared.empty.run.slug
    with Session(engine) as session:
        record = session.get(Run, prepared.run_id)
        if record is None:
            raise runs.NotFoundError(f"Run {slug!r} was deleted meanwhile.")
        labels = runs.feature_labels(session, record.id, {i for top in per_token for i, _ in top})
        feature_label, feature_max = runs.feature_label_and_max(session, record.id, feature)
        tokens = runs.load_tokens(session, record, acts.token_ids)
    column = acts.values[:, feature] if feature is not None and acts.values.size else None
    return prepared.empty.model_copy(
        update={
            "text": text,
            "message": f"The text was cut to the model's context of {n_ctx} tokens."
            if acts.truncated
            else None,
            "truncated": acts.truncated,
            "n_ctx": n_ctx,
            "tokens": [
                InferenceToken(
                    token=tokens[token_id],
                    top=[
                        FeatureActivation(
                            index=i, activation=a, label=labels.get(i, ""), url=links.feature_url(slug, i)
                        )
                        for i, a in top
                    ],
                    feature_activation=float(column[position]) if column is not None else None,
                )
                for position, (token_id, top) in enumerate(zip(acts.token_ids, per_token, strict=True))
            ],
            "feature": feature,
            "feature_label": feature_label,
            "feature_max": feature_max,
        }
    )


async def _infer(
    engine: Engine, live: LiveExecutor, run: str, text: str | None, feature: int | None
) -> InferenceResult:
    """Three steps, so no database connection is held while the model runs: read the run (thread
    pool), run the model (the bounded live executor: LiveBusy if full), read labels and tokens."""
    live.refuse_if_full()  # before the database: a refused request costs next to nothing
    prepared = await run_in_threadpool(_prepare, engine, run, text, feature)
    try:
        n_ctx, acts = await live.run(_compute, prepared, text)
    except inference.ArtifactsUnavailable as exc:
        return prepared.empty.model_copy(update={"available": False, "message": str(exc)})
    if acts is None or not text:
        return prepared.empty.model_copy(update={"n_ctx": n_ctx})
    return await run_in_threadpool(_finish, engine, prepared, text, feature, n_ctx, acts)


@router.get("/api/runs/{run}/inference", response_model=InferenceResult, responses=LIVE_RESPONSES)
async def run_inference(
    engine: EngineDep, live: LiveDep, run: RunSlug, text: ApiTextQuery, feature: ApiFeatureQuery = None
) -> InferenceResult:
    """Tokenise `text`, run it through the run's model (and SAE): each token's top features."""
    return await _infer(engine, live, run, text, feature)


@router.get("/runs/{run}/inference", include_in_schema=False)
async def show_inference(
    request: Request,
    engine: EngineDep,
    live: LiveDep,
    run: RunSlug,
    text: TextQuery = None,
    feature: FeatureQuery = None,
) -> Response:
    data = await _infer(engine, live, run, text, feature)
    return render(request, "inference.html", {"data": data, "text_max_chars": TEXT_MAX_CHARS})
