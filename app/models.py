"""Response models of the JSON API (pydantic). The database tables live in trainer/store/schema.py."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from app.family_models import FeatureMatches

SortKey = Literal["index", "density", "max_activation", "label"]
SortOrder = Literal["asc", "desc"]
SearchMode = Literal["exact", "prefix"]


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A stored timestamp in UTC with its timezone: the trainer writes UTC, SQLite gives it back
    naive and PostgreSQL in the session's timezone."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


UtcDatetime = Annotated[dt.datetime | None, AfterValidator(as_utc)]


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
    created_at: UtcDatetime
    completed_at: UtcDatetime
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


class DensitySummary(BaseModel):
    """Dead and ultralow-density shares of a run's features (or neurons), from the analysis."""

    n_units: int
    n_tokens_analyzed: int
    min_density: float | None = Field(description="1 / tokens analysed: the lowest density measurable.")
    ultralow_threshold: float = Field(description="Ultralow: fired, but on fewer than this share of tokens.")
    n_dead: int
    n_ultralow: int | None = Field(description="None when the threshold is below what was measurable.")
    dead_share: float | None
    ultralow_share: float | None


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
    density_summary: DensitySummary | None = Field(
        default=None,
        description="Dead and ultralow-density shares over the analysed tokens (the paper's A/1/4096: 4.1%, 7.1%).",
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
    effects: list[float | None] | None = Field(
        default=None,
        description="Per token: the change in log p(actual next token), in nats, when the feature is "
        "removed from the SAE reconstruction at that token (negative: it helped); 0 where it does not "
        "fire, None where the token has no next token. Absent if the run has none.",
    )
    url: str


class IntervalBand(BaseModel):
    band: int
    low: float | None
    high: float | None
    examples: list[ExampleOut]


DEFAULT_LOGIT_NOTE = "Direct effect on the next-token logits, through the MLP's output and the unembedding."


class InterpretationOut(BaseModel):
    explainer: str = Field(description="'local' (token statistics) or 'llm' (a language model's).")
    explanation: str
    rules: dict[str, Any] = Field(description="What the simulation plays: tokens, contexts, rest weight.")
    score: float | None = Field(
        description="Correlation of simulated and actual activation, every scoring token."
    )
    score_top_random: float | None
    logit_score: float | None = Field(
        description="Mean next-token percentile among its logit effects; 0.5 = chance."
    )
    logit_top_fraction: float | None


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
    logit_effects_note: str = Field(
        default=DEFAULT_LOGIT_NOTE,
        description="How the logit effects reach the logits: the exact direct path of our one-layer "
        "model's MLP, or a direct-path approximation at a hook of a deeper model.",
    )
    neighbours: list[Neighbour]
    top_examples: list[ExampleOut]
    interval_bands: list[IntervalBand] = Field(description="Interval samples, highest band first.")
    previous_index: int | None
    next_index: int | None
    url: str
    matches: FeatureMatches | None = Field(
        default=None, description="Best matches in dictionaries of other sizes and in other seeds' models."
    )
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


class LivePoolOut(BaseModel):
    """This worker's live model processes and jobs (each worker has its own)."""

    processes: int = Field(description="Child processes this worker runs model work in.")
    alive: int = Field(description="Of them, running now.")
    ready: int = Field(description="Of them, started and ready for a job.")
    jobs_admitted: int = Field(description="Live requests admitted: running or waiting for a process.")
    jobs_running: int = Field(description="Live requests whose model runs now.")
    max_jobs: int = Field(description="Admitted at once; one more is answered 503 with Retry-After.")


class Health(BaseModel):
    status: Literal["ok"]
    schema_version: int | None
    live: LivePoolOut | None = Field(
        description="This worker's live model processes (None before it started)."
    )


# ----------------------------------------------------------------------------- findings

FindingStatus = Literal["computed", "not_computed"]


class FindingFigure(BaseModel):
    """One number of a claim: the paper's beside ours (None: not stated / not computed)."""

    name: str
    paper: float | None
    paper_text: str
    ours: float | None
    ours_text: str


class FindingLink(BaseModel):
    text: str
    url: str


class Finding(BaseModel):
    """One of the paper's claims, as measured on this run."""

    key: str
    title: str
    claim: str = Field(description="The paper's claim, in one sentence.")
    status: FindingStatus
    figures: list[FindingFigure] = Field(default_factory=list)
    note: str | None = Field(default=None, description="How our numbers were measured.")
    how_to_compute: str | None = Field(
        default=None, description="What computes the numbers, when they are missing."
    )
    links: list[FindingLink] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict, description="The claim's own extra numbers.")
    # The controls of the universality and interpretability claims, at the entry's top level so
    # that other tools find them in one place (null on the other claims, and where not computed).
    yardstick_median: float | None = Field(
        default=None, description="Universality: median best match of two SAEs of one model (SAE seeds)."
    )
    median_by_density: dict[str, float | None] | None = Field(
        default=None, description="Universality: the features' median best match by density floor."
    )
    baseline_logit_score: float | None = Field(
        default=None, description="Interpretability: the logit score's chance level, measured."
    )
    ci: dict[str, Any] | None = Field(
        default=None, description="A 95% bootstrap interval per median (by unit), where computed."
    )


class CaseStudySummary(BaseModel):
    """One case study on the findings page: the best feature and the best neuron for a concept."""

    name: str
    status: Literal["ok", "no_match", "error"] = Field(
        description="'ok'; 'no_match': the proxy marks no analysed token; 'error': the proxy raised."
    )
    n_positive: int | None = Field(description="Held-out tokens the proxy marks.")
    feature: int | None = Field(description="The feature whose activations best track the proxy.")
    specificity: float | None = Field(description="Share of the feature's activation mass on the concept.")
    sensitivity: float | None = Field(description="Share of the concept's tokens where the feature fires.")
    best_neuron: int | None
    neuron_specificity: float | None
    neuron_sensitivity: float | None
    error: str | None = None
    url: str
    api_url: str


class CaseStudyThreshold(BaseModel):
    fraction: float = Field(description="Of the unit's largest activation.")
    threshold: float
    n_firing: int = Field(description="Tokens where the unit's activation exceeds the threshold.")
    share: float | None = Field(description="Share of those on the concept (None: none exceed it).")


class CaseStudyHistogram(BaseModel):
    edges: list[float] = Field(default_factory=list)
    positive: list[int] = Field(default_factory=list, description="Nonzero activations on the concept.")
    negative: list[int] = Field(default_factory=list, description="Nonzero activations elsewhere.")


class CaseStudyUnit(BaseModel):
    kind: Literal["feature", "neuron"]
    index: int
    label: str
    correlation: float = Field(description="Pearson r of its activations with the proxy's label.")
    specificity: float | None
    sensitivity: float | None
    max_activation: float
    n_firing: int
    n_positive_firing: int
    thresholds: list[CaseStudyThreshold]
    histogram: CaseStudyHistogram
    url: str | None = Field(description="Its page (None: the model's neurons are not analysed).")


class PinnedEffect(BaseModel):
    index: int
    value: float = Field(description="The activation it is pinned to.")
    pinned: float = Field(description="Mean proxy score of the tokens written with it pinned.")


class CaseStudySample(BaseModel):
    prompt: str
    unpinned: str
    feature: str | None = None
    neuron: str | None = None


class CaseStudyDownstream(BaseModel):
    n_prompts: int = 0
    n_tokens: int = Field(0, description="Tokens written per prompt.")
    pin_scale: float | None = Field(
        None,
        description="Each unit pinned at this times its largest activation (null: stored before it was recorded).",
    )
    unpinned: float | None = Field(None, description="Mean proxy score of the tokens written unpinned.")
    feature: PinnedEffect | None = None
    neuron: PinnedEffect | None = None
    samples: list[CaseStudySample] = Field(default_factory=list)
    error: str | None = Field(None, description="The proxy raised on the written text.")


class CaseStudyView(BaseModel):
    """One case study: a concept proxy against the run's best feature and its model's best neuron."""

    run: RunRef
    neuron_run: RunRef | None
    name: str
    status: Literal["ok", "no_match", "error"]
    description: str
    definition: str
    builtin: bool
    n_tokens: int | None
    n_positive: int | None
    positive_score: float | None = Field(description="A token is on the concept from this proxy score.")
    message: str | None = Field(description="Why there is nothing to measure, when there is not.")
    paper_claim: str | None = Field(description="What the paper says of this concept (None: not studied).")
    feature: CaseStudyUnit | None
    neuron: CaseStudyUnit | None
    downstream: CaseStudyDownstream | None
    others: list[CaseStudySummary]
    findings_url: str
    url: str


class Findings(BaseModel):
    run: RunRef
    feature_run: RunRef | None = Field(description="The SAE run whose features are compared.")
    neuron_run: RunRef | None = Field(description="The same model's neurons, analysed alike.")
    findings: list[Finding]
    case_studies: list[CaseStudySummary] = Field(
        default_factory=list,
        description="The paper's case studies on the feature run, one per concept proxy.",
    )
    url: str
