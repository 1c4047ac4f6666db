"""Live inference: run a text through a run's model (and SAE) and show its features per token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BeforeValidator, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from app import inference, links, queries
from app.deps import SessionDep
from app.models import FeatureActivation, InferenceResult, InferenceToken, blank_is_none
from app.routes.runs import RunSlug
from app.templating import render

router = APIRouter(tags=["inference"])

TEXT_MAX_CHARS = 2000

TextQuery = Annotated[
    str | None, Query(max_length=TEXT_MAX_CHARS, description="The text to run (cut to the context).")
]
FeatureQuery = Annotated[
    Annotated[int, Field(ge=0, le=100_000_000)] | None,
    BeforeValidator(blank_is_none),
    Query(description="The feature to show over the text; default the strongest."),
]


def _compute(kind: str, artifacts_path: str | None, sae_path: str | None, text: str) -> inference.Activations:
    loaded = inference.load_artifacts(kind, artifacts_path, sae_path)
    return inference.feature_activations(loaded, text)


async def _infer(session: SessionDep, run: str, text: str | None, feature: int | None) -> InferenceResult:
    record = queries.get_run(session, run)
    ref = queries.run_ref(record)
    if feature is not None and feature >= record.n_features:
        raise queries.NotFoundError(f"Run {run!r} has no feature {feature} (it has {record.n_features}).")
    empty = InferenceResult(
        run=ref,
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
    try:
        # Loading (first use) and the forward pass are CPU work: keep them off the event loop.
        loaded = await run_in_threadpool(
            inference.load_artifacts, record.kind, record.artifacts_path, record.sae_path
        )
        if not text:
            return empty.model_copy(update={"n_ctx": loaded.n_ctx})
        acts = await run_in_threadpool(_compute, record.kind, record.artifacts_path, record.sae_path, text)
    except inference.ArtifactsUnavailable as exc:
        return empty.model_copy(update={"available": False, "message": str(exc)})

    per_token = inference.top_features(acts.values)
    if feature is None and acts.values.size:
        feature = int(acts.values.max(axis=0).argmax())
    labels = queries.feature_labels(
        session, record.id, {i for top in per_token for i, _ in top} | {feature or 0}
    )
    tokens = queries.load_tokens(session, record, acts.token_ids)
    column = acts.values[:, feature] if feature is not None and acts.values.size else None
    return InferenceResult(
        run=ref,
        text=text,
        available=True,
        message=f"The text was cut to the model's context of {loaded.n_ctx} tokens."
        if acts.truncated
        else None,
        truncated=acts.truncated,
        n_ctx=loaded.n_ctx,
        tokens=[
            InferenceToken(
                token=tokens[token_id],
                top=[
                    FeatureActivation(
                        index=i, activation=a, label=labels.get(i, ""), url=links.feature_url(run, i)
                    )
                    for i, a in top
                ],
                feature_activation=float(column[position]) if column is not None else None,
            )
            for position, (token_id, top) in enumerate(zip(acts.token_ids, per_token, strict=True))
        ],
        feature=feature,
        feature_label=labels.get(feature) if feature is not None else None,
        feature_max=queries.feature_max_activation(session, record.id, feature)
        if feature is not None
        else None,
    )


@router.get("/api/runs/{run}/inference", response_model=InferenceResult)
async def run_inference(
    session: SessionDep, run: RunSlug, text: TextQuery = None, feature: FeatureQuery = None
) -> InferenceResult:
    """Tokenise `text`, run it through the run's model (and SAE): each token's top features."""
    return await _infer(session, run, text, feature)


@router.get("/runs/{run}/inference", include_in_schema=False)
async def show_inference(
    request: Request, session: SessionDep, run: RunSlug, text: TextQuery = None, feature: FeatureQuery = None
) -> Response:
    data = await _infer(session, run, text, feature)
    return render(request, "inference.html", {"data": data, "text_max_chars": TEXT_MAX_CHARS})
