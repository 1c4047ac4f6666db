"""Response models of the JSON API (pydantic). The database tables live in trainer/schema.py."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.interpretability import InterpretationOut

SortKey = Literal["index", "density", "max_activation", "label"]
SortOrder = Literal["asc", "desc"]
SearchMode = Literal["exact", "prefix"]


def blank_is_none(value: object) -> object:
    """An empty form box submits "": read it as "not given" rather than as a bad number."""
    return None if isinstance(value, str) and not value.strip() else value


class TokenOut(BaseModel):
    """One vocabulary token: exact text, display form (whitespace visible), repr-like quoting."""

    id: int
    text: str
    display: str
    quoted: str


class Histogram(BaseModel):
    edges: list[float] = Field(default_factory=list)
    counts: list[int] = Field(default_factory=list)
    n_zero: int | None = None


class HeadlineMetrics(BaseModel):
    l0: float | None = None
    dead_fraction: float | None = None
    fvu: float | None = None
    ce_loss_recovered: float | None = None


class RunSummary(BaseModel):
    slug: str
    kind: str
    status: str
    model_name: str
    variant: str
    d_in: int
    n_features: int
    n_tokens_analyzed: int
    created_at: dt.datetime | None
    completed_at: dt.datetime | None
    headline: HeadlineMetrics
    url: str
    api_url: str


class RunList(BaseModel):
    runs: list[RunSummary]
    unfinished: list[RunSummary] = Field(description="Runs still running or failed: not browsable yet.")


class FeatureRow(BaseModel):
    index: int
    density: float
    max_activation: float
    label: str
    label_source: str
    url: str


class FeatureListFilters(BaseModel):
    q: str | None = None
    token: str | None = None
    density_min: float | None = None
    density_max: float | None = None


class FeatureList(BaseModel):
    items: list[FeatureRow]
    total: int
    page: int
    size: int
    n_pages: int
    sort: SortKey
    order: SortOrder
    filters: FeatureListFilters


class MapPoint(BaseModel):
    index: int
    x: float
    y: float
    label: str
    density: float


class RunDetail(BaseModel):
    run: RunSummary
    error: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    density_histogram: Histogram
    training_log: dict[str, Any]
    corpus_manifest: dict[str, Any]
    features: FeatureList
    feature_map: list[MapPoint] = Field(
        default_factory=list,
        description="Every feature's place on the run's map (UMAP of the feature directions, as in "
        "the paper): related features sit together. Empty if the run has no map.",
    )


class RunRef(BaseModel):
    slug: str
    kind: str
    model_name: str
    variant: str
    n_features: int
    url: str


class TopToken(BaseModel):
    token: TokenOut
    count: int
    mean_activation: float


class LogitEntry(BaseModel):
    token: TokenOut
    value: float


class Neighbour(BaseModel):
    index: int
    cosine: float
    label: str
    url: str


class ExampleOut(BaseModel):
    """A context window; `tokens[i]` is the display text of `token_ids[i]`."""

    id: int
    kind: str
    band: int | None
    rank: int
    max_activation: float
    focus_position: int
    token_ids: list[int]
    tokens: list[str]
    activations: list[float]
    url: str


class IntervalBand(BaseModel):
    band: int
    low: float | None
    high: float | None
    examples: list[ExampleOut]


class FeatureDetail(BaseModel):
    run: RunRef
    index: int
    unit: Literal["Feature", "Neuron"]
    label: str
    label_source: str
    density: float
    max_activation: float
    mean_activation: float
    activation_histogram: Histogram
    band_edges: list[float]
    top_tokens: list[TopToken]
    logit_positive: list[LogitEntry]
    logit_negative: list[LogitEntry]
    logit_histogram: Histogram
    neighbours: list[Neighbour]
    top_examples: list[ExampleOut]
    interval_bands: list[IntervalBand] = Field(description="Interval samples, highest band first.")
    previous_index: int | None
    next_index: int | None
    url: str
    interpretations: list[InterpretationOut] = Field(
        default_factory=list, description="Automatic explanations with their interpretability scores."
    )


class SearchHit(BaseModel):
    run: str
    kind: str
    token: TokenOut
    feature_index: int
    label: str
    density: float | None
    mean_activation: float
    count: int
    url: str


class TokenMatch(BaseModel):
    run: str
    token: TokenOut


class SearchResult(BaseModel):
    token: str | None
    mode: SearchMode
    run: str | None
    matches: list[TokenMatch] = Field(description="Vocabulary tokens matching the query, per run.")
    hits: list[SearchHit] = Field(
        description="Features that fire most on the matching tokens, strongest first."
    )
    truncated: bool


class FeatureActivation(BaseModel):
    index: int
    activation: float
    label: str
    url: str


class InferenceToken(BaseModel):
    token: TokenOut
    top: list[FeatureActivation]
    feature_activation: float | None = None


class InferenceResult(BaseModel):
    run: RunRef
    text: str
    available: bool
    message: str | None
    truncated: bool
    n_ctx: int | None
    tokens: list[InferenceToken]
    feature: int | None
    feature_label: str | None
    feature_max: float | None


class NextTokenOut(BaseModel):
    token: TokenOut
    logit: float
    probability: float


class SteeredContinuation(BaseModel):
    pinned: bool
    tokens: list[TokenOut] = Field(description="The generated tokens (greedy).")
    text: str = Field(description="The generated tokens decoded.")
    next_tokens: list[NextTokenOut] = Field(description="The top next tokens at the last prompt position.")


class SteerResult(BaseModel):
    run: RunRef
    text: str
    feature: int | None
    feature_label: str | None
    feature_max: float | None
    value: float | None = Field(description="The value the feature is pinned to at every position.")
    value_is_default: bool
    default_multiple: float = Field(description="The default value is this multiple of the max activation.")
    n_tokens: int
    available: bool
    message: str | None
    truncated: bool = Field(description="The prompt is longer than the context: the model saw its end.")
    n_ctx: int | None
    activation: float | None = Field(description="The feature's own activation at the last prompt token.")
    prompt: list[TokenOut]
    unpinned: SteeredContinuation | None
    pinned: SteeredContinuation | None


class Health(BaseModel):
    status: Literal["ok"]
    schema_version: int | None
