"""Pin a feature while the model writes: greedy continuations of a prompt with and without it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BeforeValidator, Field
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from app.deps import EngineDep, LiveDep
from app.live import inference, steering
from app.live.pool import LiveExecutor, Prepared
from app.models import NextTokenOut, SteeredContinuation, SteerResult, TokenOut, blank_is_none
from app.pages.templating import render
from app.queries import runs
from app.responses import LIVE_RESPONSES
from app.routes.inference import TEXT_MAX_CHARS
from app.routes.runs import RunSlug
from trainer.store.schema import Run

router = APIRouter(tags=["steering"])

VALUE_MAX = 1000.0
TOKENS_MAX = 64
TOKENS_DEFAULT = 24
DEFAULT_MULTIPLE = 5.0  # the default pin: this many times the feature's max activation

TextQuery = Annotated[
    str | None,
    Query(max_length=TEXT_MAX_CHARS, description="The prompt (the model reads its last n_ctx tokens)."),
]
# The page's form: its feature box is required (an empty one is 422); an empty value box means
# the default value.
FeatureQuery = Annotated[
    int | None, Query(ge=0, le=100_000_000, description="The feature (or neuron) to pin.")
]
ValueQuery = Annotated[
    Annotated[float, Field(ge=-VALUE_MAX, le=VALUE_MAX)] | None,
    BeforeValidator(blank_is_none),
    Query(description=f"The value to pin the feature to; default {DEFAULT_MULTIPLE:g}× its max activation."),
]
# The JSON API is not a form: an empty parameter is a bad value (422), not a missing one.
ApiTextQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=TEXT_MAX_CHARS,
        description="The prompt (the model reads its last n_ctx tokens).",
    ),
]
ApiFeatureQuery = Annotated[int, Query(ge=0, le=100_000_000, description="The feature (or neuron) to pin.")]
ApiValueQuery = Annotated[
    float | None,
    Query(
        ge=-VALUE_MAX,
        le=VALUE_MAX,
        description=f"The value to pin the feature to; default {DEFAULT_MULTIPLE:g}× its max activation.",
    ),
]
TokensQuery = Annotated[int, Query(ge=1, le=TOKENS_MAX, description="How many tokens to generate.")]


def _default_value(feature_max: float | None) -> float:
    """DEFAULT_MULTIPLE × the max activation (× 1 if the feature never fired), within bounds."""
    scale = feature_max if feature_max is not None and feature_max > 0 else 1.0
    return min(DEFAULT_MULTIPLE * scale, VALUE_MAX)


def _continuation(
    result: steering.Continuation, tokens: dict[int, TokenOut], pinned: bool
) -> SteeredContinuation:
    return SteeredContinuation(
        pinned=pinned,
        tokens=[tokens[t] for t in result.token_ids],
        text=result.text,
        next_tokens=[
            NextTokenOut(token=tokens[n.token_id], logit=n.logit, probability=n.probability)
            for n in result.next_tokens
        ],
    )


def _prepare(
    engine: Engine, run: str, text: str | None, feature: int | None, value: float | None, n_tokens: int
) -> Prepared[SteerResult]:
    with Session(engine) as session:
        record = runs.get_run(session, run)
        if feature is not None and feature >= record.n_features:
            raise runs.NotFoundError(f"Run {run!r} has no feature {feature} (it has {record.n_features}).")
        feature_label, feature_max = runs.feature_label_and_max(session, record.id, feature)
        value_is_default = value is None and feature is not None
        if value is None and feature is not None:
            value = _default_value(feature_max)
        empty = SteerResult(
            run=runs.run_ref(record),
            text=text or "",
            feature=feature,
            feature_label=feature_label,
            feature_max=feature_max,
            value=value,
            value_is_default=value_is_default,
            default_multiple=DEFAULT_MULTIPLE,
            n_tokens=n_tokens,
            available=True,
            message=None,
            truncated=False,
            n_ctx=None,
            activation=None,
            prompt=[],
            unpinned=None,
            pinned=None,
        )
        return Prepared(record.id, inference.model_source(record), empty)


def _generate(
    prepared: Prepared[SteerResult], text: str | None, feature: int | None, value: float | None, n_tokens: int
) -> tuple[int, steering.Steering | None]:
    """The model's part (on the live executor): load the run's artifacts (cached), then steer."""
    loaded = inference.load_artifacts(prepared.source)
    if not text or feature is None or value is None:
        return loaded.n_ctx, None
    return loaded.n_ctx, steering.steer(loaded, text, feature, value, n_tokens)


def _finish(
    engine: Engine, prepared: Prepared[SteerResult], n_ctx: int, result: steering.Steering
) -> SteerResult:
    ids = [*result.prompt_ids, *result.unpinned.token_ids, *result.pinned.token_ids]
    ids += [n.token_id for c in (result.unpinned, result.pinned) for n in c.next_tokens]
    with Session(engine) as session:
        record = session.get(Run, prepared.run_id)
        if record is None:
            raise runs.NotFoundError(f"Run {prepared.empty.run.slug!r} was deleted meanwhile.")
        tokens = runs.load_tokens(session, record, ids)
    return prepared.empty.model_copy(
        update={
            "message": f"The prompt is longer than the model's context: it read the last {n_ctx} tokens."
            if result.truncated
            else None,
            "truncated": result.truncated,
            "activation": result.activation,
            "prompt": [tokens[t] for t in result.prompt_ids],
            "unpinned": _continuation(result.unpinned, tokens, pinned=False),
            "pinned": _continuation(result.pinned, tokens, pinned=True),
        }
    )


async def _steer(
    engine: Engine,
    live: LiveExecutor,
    run: str,
    text: str | None,
    feature: int | None,
    value: float | None,
    n_tokens: int,
) -> SteerResult:
    """Three steps, so no database connection is held while the model runs: read the run (thread
    pool), run the model (the bounded live executor: LiveBusy if full), read the tokens."""
    live.refuse_if_full()  # before the database: a refused request costs next to nothing
    prepared = await run_in_threadpool(_prepare, engine, run, text, feature, value, n_tokens)
    try:
        n_ctx, result = await live.run(_generate, prepared, text, feature, prepared.empty.value, n_tokens)
    except inference.ArtifactsUnavailable as exc:
        return prepared.empty.model_copy(update={"available": False, "message": str(exc)})
    if result is None:
        return prepared.empty.model_copy(update={"n_ctx": n_ctx})
    finished = await run_in_threadpool(_finish, engine, prepared, n_ctx, result)
    return finished.model_copy(update={"n_ctx": n_ctx})


@router.get("/api/runs/{run}/steer", response_model=SteerResult, responses=LIVE_RESPONSES)
async def run_steer(
    engine: EngineDep,
    live: LiveDep,
    run: RunSlug,
    text: ApiTextQuery,
    feature: ApiFeatureQuery,
    value: ApiValueQuery = None,
    tokens: TokensQuery = TOKENS_DEFAULT,
) -> SteerResult:
    """Greedy continuations of `text` as the model writes it and with `feature` pinned to `value`."""
    return await _steer(engine, live, run, text, feature, value, tokens)


@router.get("/runs/{run}/steer", include_in_schema=False)
async def show_steer(
    request: Request,
    engine: EngineDep,
    live: LiveDep,
    run: RunSlug,
    text: TextQuery = None,
    feature: FeatureQuery = None,
    value: ValueQuery = None,
    tokens: TokensQuery = TOKENS_DEFAULT,
) -> Response:
    data = await _steer(engine, live, run, text, feature, value, tokens)
    return render(
        request,
        "steer.html",
        {"data": data, "text_max_chars": TEXT_MAX_CHARS, "value_max": VALUE_MAX, "tokens_max": TOKENS_MAX},
    )
