"""Response models of the study's views: a feature's matches in other runs (feature splitting
across sizes, universality across seeds), a family tree across sizes, best-match histograms."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# Towards Monosemanticity: median best-match activation correlation, model A vs model B.
PAPER_MEDIAN_FEATURES = 0.72
PAPER_MEDIAN_NEURONS = 0.46
# Features of different sizes are drawn as one family above this activation correlation.
FAMILY_THRESHOLD = 0.4


class LinkedRun(BaseModel):
    slug: str
    kind: str
    model_name: str
    n_features: int
    url: str


class MatchOut(BaseModel):
    index: int
    label: str
    url: str
    activation_correlation: float
    decoder_cosine: float | None = Field(default=None, description="Decoder cosine (same model only).")
    logit_correlation: float | None = Field(default=None, description="Correlation of the logit weights.")


class MatchGroup(BaseModel):
    """A feature's best matches in one other run, best first."""

    relation: Literal["sizes", "seeds"]
    run: LinkedRun
    n_tokens: int
    matches: list[MatchOut]


class FeatureMatches(BaseModel):
    sizes: list[MatchGroup] = Field(description="Dictionaries of other sizes (smallest first).")
    seeds: list[MatchGroup] = Field(description="Runs of models trained from other seeds.")
    family_url: str | None = Field(default=None, description="The family tree across sizes, if any.")
    universality_url: str | None = None


class FamilyNode(BaseModel):
    id: int
    parent: int | None
    level: int  # position of its run in `FamilyTree.levels`
    run: str
    index: int
    label: str
    url: str
    correlation: float | None = Field(default=None, description="Activation correlation with its parent.")
    on_path: bool = Field(description="On the path from the root to the feature asked for.")


class FamilyTree(BaseModel):
    run: LinkedRun
    index: int
    threshold: float
    levels: list[LinkedRun] = Field(description="The dictionaries of the family, smallest first.")
    nodes: list[FamilyNode]
    url: str
    message: str | None = None


class MedianCI(BaseModel):
    """A median best-match correlation with its 95% bootstrap interval over units."""

    median: float | None
    ci: list[float] | None = Field(default=None, description="[low, high], percentile bootstrap.")
    n: int = Field(description="Units the median is over.")


class MatchSummary(BaseModel):
    overall: MedianCI = Field(description="Every unit; a dead one counts at r 0.")
    alive: MedianCI | None = Field(default=None, description="Units that fired on the matching tokens.")
    by_density: dict[str, MedianCI] = Field(
        default_factory=dict, description="Units at least as dense as each floor (key), e.g. '0.0001'."
    )


class BestMatchHistogram(BaseModel):
    run: LinkedRun
    other: LinkedRun
    n_tokens: int
    n: int
    median: float | None
    mean: float | None
    edges: list[float]
    counts: list[int]
    summary: MatchSummary | None = Field(
        default=None,
        description="Medians with intervals, overall, alive, by density (matched since issue 21).",
    )


class UniversalityView(BaseModel):
    run: LinkedRun
    features: list[BestMatchHistogram]
    neurons: list[BestMatchHistogram]
    yardstick: list[BestMatchHistogram] = Field(
        default_factory=list,
        description="This model's SAE against a second SAE of its size from another seed (same activations).",
    )
    paper_median_features: float = PAPER_MEDIAN_FEATURES
    paper_median_neurons: float = PAPER_MEDIAN_NEURONS
    message: str | None = Field(default=None, description="Why nothing (or not the run asked for) is shown.")
    url: str
