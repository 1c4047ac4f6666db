"""Typed configuration for every stage, and the named presets.

One frozen dataclass per stage, nested in `RunConfig`. `__post_init__` only validates;
derived numbers are properties. The CLI maps its flags onto these in one place (`cli.py`),
and the whole `RunConfig` is saved beside every artifact and in the database.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

SAEVariant = Literal["paper", "l1_decnorm", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk"]
SAE_VARIANTS: tuple[str, ...] = (
    "paper",
    "l1_decnorm",
    "topk",
    "batchtopk",
    "jumprelu",
    "matryoshka_batchtopk",
)
ComputeDtype = Literal["bf16", "fp32"]


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which and why."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class CorpusConfig:
    # Empty `sources` means the built-in offline corpus (see trainer/corpus/text.py).
    sources: tuple[str, ...] = ()
    text_field: str = "text"  # the field read from JSONL sources
    max_bytes: int = 64_000_000  # cap on the text kept (UTF-8 bytes)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.max_bytes > 0, "corpus.max_bytes must be positive")


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 4096
    tokenizer_path: str | None = None  # a user's tokenizer.json instead of training one
    bpe_train_bytes: int = 24_000_000  # BPE merges are learned on this prefix of the corpus
    val_fraction: float = 0.02  # held-out documents, never trained on

    def __post_init__(self) -> None:
        _check(256 < self.vocab_size <= 1_000_000, "tokenizer.vocab_size must be in (256, 1e6]")
        _check(0.0 < self.val_fraction < 0.5, "tokenizer.val_fraction must be in (0, 0.5)")


@dataclass(frozen=True)
class ModelConfig:
    """The paper's A/1 shape: one attention block and one 512-neuron ReLU MLP, residual 128."""

    vocab_size: int = 4096
    n_ctx: int = 128
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    activation: Literal["relu", "gelu"] = "relu"

    def __post_init__(self) -> None:
        _check(self.d_model % self.n_heads == 0, "model.d_model must be divisible by model.n_heads")
        _check(self.activation in ("relu", "gelu"), f"model.activation {self.activation!r}: use relu or gelu")
        _check(self.n_ctx >= 8, "model.n_ctx must be at least 8")


@dataclass(frozen=True)
class LMTrainConfig:
    n_steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    eval_interval: int = 200
    checkpoint_interval: int = 200
    dtype: ComputeDtype = "bf16"
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.n_steps > 0 and self.batch_size > 0, "lm training needs n_steps > 0 and batch_size > 0")
        _check(self.dtype in ("bf16", "fp32"), f"lm.dtype {self.dtype!r}: use bf16 or fp32")


@dataclass(frozen=True)
class HarvestConfig:
    n_tokens: int = 4_000_000
    shard_rows: int = 1_000_000
    batch_contexts: int = 64  # 64 x n_ctx rows a forward: 1.25x faster than 256 (cache-sized)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.n_tokens > 0 and self.shard_rows > 0, "harvest.n_tokens and shard_rows must be positive")


@dataclass(frozen=True)
class SAEConfig:
    d_in: int = 512
    d_sae: int = 4096
    variant: SAEVariant = "paper"
    # λ: paper / l1_decnorm's L1 penalty, jumprelu's L0 penalty. On normalised inputs Anthropic's 5
    # fits any model; with target_l0 it is only the controller's starting point.
    l1_coefficient: float = 5.0
    k: int = 32  # topk / batchtopk
    aux_k: int = 512  # AuxK latents for topk / batchtopk (Gao et al. 2024's 512)
    aux_coefficient: float = 1 / 32
    # In normalised units (latents' activations are O(1) there). Thresholds are learned in log space
    # at Adam's pace, so in a short run they must start near where they end: 1e-3 (Rajamanoharan
    # et al.'s, for far longer runs) left L0 at ~half of d_sae after 1,200 steps.
    jumprelu_init_threshold: float = 0.5
    jumprelu_bandwidth: float = 0.2
    # The thresholds' lr is this many times the others'. Adam moves log θ by about lr per step
    # whatever λ is, so at 3e-3 the L0 lags its target by far in a short run (target 8 ended at
    # held-out L0 18 after 256 steps).
    jumprelu_threshold_lr_scale: float = 10.0
    # Anthropic's pre-activation loss (Circuits Updates, January 2025), on the dead latents only:
    # coefficient × (1/N) Σ_n Σ_dead relu(θ − pre) pulls a silent latent's pre-activations up to
    # its threshold until it fires again (demo activations, target L0 16: 20% dead on held-out text
    # without, 3.3% with 0.01 at about the same FVU, 2.2% with 0.03 at a worse one). 0: off.
    jumprelu_preact_coefficient: float = 0.01
    # batchtopk: the first this fraction of the steps train as topk (each row's k), the rest on the
    # batch's top k·N (trainer.sae.variants.batchtopk explains why). 0: the batch's from the start.
    batchtopk_topk_fraction: float = 0.8
    # λ is adapted during training so that L0 lands here (paper, l1_decnorm, jumprelu): see
    # trainer.sae.train.adapt_sparsity_coefficient. None: λ stays l1_coefficient.
    target_l0: float | None = None
    target_l0_gain: float = 0.05  # per step, log λ moves by gain × log((L0 + 1) / (target + 1))
    # Train on x · s with s = √d_in / mean ‖x‖ (Anthropic, April 2024), so λ, lr and the init mean
    # the same on any model's activations; s is folded into the saved weights (trainer.sae.autoencoder).
    normalize_activations: bool = True
    # The encoder starts as init_norm × the decoder's transpose; l1_decnorm's decoder rows start at
    # norm init_norm (the other variants keep unit-norm rows). None: the variant's default
    # (Variant.default_init_norm: 0.1 for the L1-style variants, 1.0, the tied unit init, for TopK).
    init_norm: float | None = None
    lr: float | None = None  # Adam's peak lr; None: the variant's (Variant.default_lr)
    lr_warmup_fraction: float = 0.05  # linear warm-up from 0 over this fraction of the steps
    lr_decay_fraction: float = 0.2  # linear decay to 0 over this last fraction of the steps
    batch_size: int = 4096
    n_tokens: int = 4_000_000
    # λ ramps up from 0 over this fraction of the run: features form before the penalty bites. At
    # 0.05 (the paper's) a short run at L0 3-16 ended with 14-30% dead and worse directions.
    l1_warmup_fraction: float = 0.5
    # Dead latents are re-initialised toward badly reconstructed inputs after these fractions of the
    # run (trainer.sae.resample). None: the variant's (Variant.default_resample_fractions).
    resample_fractions: tuple[float, ...] | None = None
    # A resampled latent's encoder vector: this × the mean norm of the alive ones (along its new
    # decoder direction). None: the variant's (Variant.default_resample_encoder_scale; paper's 0.2).
    resample_encoder_scale: float | None = None
    # "dead" = no firing in this fraction of the run (AuxK's latents; paper's resampling). With
    # 0.05 and aux_k 512 the demo TopK SAE ends 3.8% dead on held-out text, 6.3% with 0.1 and 256.
    dead_window_fraction: float = 0.05
    # topk / batchtopk: after each step a dead latent's b_enc rises until it would win on this many
    # rows of the batch (trainer.sae.revive). 0: off.
    revive_rows: int = 1
    # matryoshka_batchtopk: the nested prefixes' widths, increasing, the last d_sae (SAELens's
    # matryoshka_widths). None: d_sae/8, d_sae/4, d_sae/2, d_sae.
    matryoshka_widths: tuple[int, ...] | None = None
    checkpoint_interval: int = 200  # steps
    dtype: ComputeDtype = "bf16"
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            self.variant in SAE_VARIANTS,
            f"unknown SAE variant {self.variant!r}; choose one of {', '.join(SAE_VARIANTS)}",
        )
        _check(self.d_in > 0 and self.d_sae > 0, "sae.d_in and sae.d_sae must be positive")
        _check(0 < self.k <= self.d_sae, "sae.k must be in (0, d_sae]")
        _check(self.batch_size > 0 and self.n_tokens >= self.batch_size, "sae.n_tokens must be >= batch_size")
        _check(
            all(0 < f < 1 for f in self.resample_fractions or ()), "sae.resample_fractions must be in (0, 1)"
        )
        _check(
            0 <= self.lr_warmup_fraction
            and 0 <= self.lr_decay_fraction
            and self.lr_warmup_fraction + self.lr_decay_fraction <= 1,
            "sae.lr_warmup_fraction and sae.lr_decay_fraction must be >= 0 and sum to at most 1",
        )
        _check(self.revive_rows >= 0, "sae.revive_rows must be >= 0")
        _check(0 <= self.batchtopk_topk_fraction <= 1, "sae.batchtopk_topk_fraction must be in [0, 1]")
        _check(self.init_norm is None or self.init_norm > 0, "sae.init_norm must be positive")
        widths = self.matryoshka_widths
        _check(
            not widths
            or (list(widths) == sorted(set(widths)) and widths[0] > 0 and widths[-1] == self.d_sae),
            f"sae.matryoshka_widths must increase from above 0 to d_sae = {self.d_sae}, got {widths}",
        )
        if self.target_l0 is not None:
            _check(
                0 < self.target_l0 < self.d_sae,
                f"sae.target_l0 {self.target_l0} cannot be reached: it must be in (0, d_sae = {self.d_sae})",
            )
            _check(
                self.variant not in ("topk", "batchtopk", "matryoshka_batchtopk"),
                f"sae.target_l0 is for the L1-style variants; {self.variant} sets its L0 with sae.k",
            )

    @property
    def n_steps(self) -> int:
        return self.n_tokens // self.batch_size


@dataclass(frozen=True)
class EvalConfig:
    n_tokens: int = 200_000
    batch_contexts: int = 64
    dense_threshold: float = 0.1  # a feature firing on more than this fraction of tokens is "dense"


@dataclass(frozen=True)
class AnalysisConfig:
    n_tokens: int = 2_000_000
    n_top_examples: int = 20
    n_intervals: int = 10
    examples_per_interval: int = 5
    context_before: int = 24
    context_after: int = 8
    histogram_bins: int = 40
    n_logit_tokens: int = 10
    n_neighbours: int = 8
    tokens_per_batch: int = 16_384  # bounds memory: [tokens_per_batch, d_sae] floats at a time
    n_top_tokens: int = 10  # per feature: the input tokens it fires on most
    n_token_features: int = 8  # per vocabulary token: the features kept in the search index
    dtype: ComputeDtype = "bf16"  # model + SAE forward in the analysis stream
    seed: int = 0  # interval-sample reservoirs
    # Automatic interpretability (trainer/analysis/interpretability.py): what a local explanation
    # lists, and the optional language-model explainer (off unless llm_url is set; key from the
    # environment, never stored).
    explain_tokens: int = 10
    explain_contexts: int = 5
    explain_candidates: int = 16  # top explanation-split positions whose contexts are candidates
    llm_url: str | None = None  # an OpenAI-compatible endpoint, e.g. http://localhost:8080/v1
    llm_model: str | None = None
    llm_max_units: int = 100  # units per run explained by the model (0: all)
    llm_timeout: float = 30.0  # seconds per request
    llm_retries: int = 2

    def __post_init__(self) -> None:
        _check(
            self.context_before + self.context_after + 1 >= 32 or self.n_tokens < 10_000,
            "analysis context must hold at least 32 tokens",
        )
        _check(
            self.explain_tokens >= 1 and self.explain_contexts >= 0 and self.explain_candidates >= 1,
            "analysis.explain_tokens and explain_candidates must be >= 1, explain_contexts >= 0",
        )
        _check(
            self.llm_timeout > 0 and self.llm_retries >= 0,
            "analysis.llm_timeout must be > 0, llm_retries >= 0",
        )


@dataclass(frozen=True)
class CaseStudyConfig:
    """The paper's case studies (trainer/analysis/case_studies.py): concept proxies measured on
    held-out text against the best feature and the best neuron, and pinned while the model writes."""

    n_tokens: int | None = None  # held-out tokens; None: as many as the run analysed
    proxies: tuple[str, ...] = ()  # the user's proxies: NAME=REGEX or MODULE:FUNCTION
    builtin: bool = True  # also the built-in proxies (trainer/analysis/proxies.py)
    thresholds: tuple[float, ...] = (0.0, 0.25, 0.5)  # specificity above these fractions of the max
    histogram_bins: int = 30
    n_prompts: int = 8  # downstream effect: greedy continuations of this many held-out windows
    prompt_tokens: int = 16
    generate_tokens: int = 24
    n_samples: int = 3  # continuations kept for the page
    # A unit is pinned at this times its largest activation on the tokens. At 1x no feature of the
    # study's A/1/4096 made the model write its concept; at 10x the Devanagari feature wrote 95%
    # Devanagari and at 30x the Cyrillic one 45% Cyrillic, while the best neurons pinned alike wrote
    # none (16 held-out prompts, 24 tokens each; issue 21). The paper pins features far above their
    # usual values too.
    pin_scale: float = 10.0
    tokens_per_batch: int = 8192
    dtype: ComputeDtype = "fp32"

    def __post_init__(self) -> None:
        _check(self.n_tokens is None or self.n_tokens > 0, "case_studies.n_tokens must be positive")
        _check(all(0 <= f < 1 for f in self.thresholds), "case_studies.thresholds must be in [0, 1)")
        _check(self.histogram_bins > 0 and self.tokens_per_batch > 0, "case_studies: bins and batch > 0")
        _check(
            self.n_prompts >= 0 and self.prompt_tokens > 0 and self.generate_tokens > 0,
            "case_studies: n_prompts >= 0, prompt_tokens and generate_tokens > 0",
        )


@dataclass(frozen=True)
class StudyConfig:
    """The paper's comparisons (monosemantic/study.py): SAEs of several sizes on one model's activations
    (feature splitting) and a model B trained from another seed with its own SAE (universality)."""

    sizes: tuple[int, ...] = ()  # d_sae of every dictionary; () = only sae.d_sae
    seed_b: int | None = None  # train model B from this seed (None: no model B)
    # Universality's yardstick: a second SAE of the main size on model A's same activations from this
    # SAE seed, matched with the first (None: none). Two SAEs differing only in seed bound what
    # A-vs-B can reach.
    yardstick_seed: int | None = None
    match_tokens: int | None = None  # held-out tokens the correlations use; None: the analysed ones
    n_matches: int = 3  # best matches stored per feature and other run

    def __post_init__(self) -> None:
        _check(all(size > 0 for size in self.sizes), "study.sizes must be positive")
        _check(len(set(self.sizes)) == len(self.sizes), "study.sizes must not repeat a size")
        _check(self.n_matches > 0, "study.n_matches must be positive")


@dataclass(frozen=True)
class RunConfig:
    preset: str = "demo"
    out_dir: str = "runs/demo"
    db_url: str | None = None  # None: sqlite file under out_dir (or DATABASE_URL)
    run_name: str | None = None  # readable slug in the database; default derived from preset+variant
    device: str = "cpu"
    # An SAE folder to evaluate / analyse instead of the one this run trained (`--sae PATH`).
    sae_path: str | None = None
    # A transformers causal LM (folder or hub id) to study instead of our one-layer model, and the
    # hook point read on it (trainer/lm/hf_model.py). `hook` alone may only name our model's one.
    model_path: str | None = None
    hook: str | None = None
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lm: LMTrainConfig = field(default_factory=LMTrainConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    case_studies: CaseStudyConfig = field(default_factory=CaseStudyConfig)

    def __post_init__(self) -> None:
        _check(
            self.model.vocab_size == self.tokenizer.vocab_size
            or self.tokenizer.tokenizer_path is not None
            or self.model_path is not None,
            "model.vocab_size must equal tokenizer.vocab_size",
        )

    # Paths of every artifact, in one place.
    @property
    def root(self) -> Path:
        return Path(self.out_dir)

    @property
    def corpus_dir(self) -> Path:
        return self.root / "corpus"

    @property
    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def tokens_dir(self) -> Path:
        return self.root / "tokens"

    @property
    def lm_dir(self) -> Path:
        return self.root / "lm"

    @property
    def activations_dir(self) -> Path:
        return self.root / "activations" / self.hook if self.hook else self.root / "activations"

    @property
    def sae_dir(self) -> Path:
        if self.sae_path:
            return Path(self.sae_path)
        hook = f"{self.hook}_" if self.hook else ""
        return self.root / f"sae_{hook}{self.sae.variant}_{self.sae.d_sae}"

    @property
    def eval_dir(self) -> Path:
        """Where evaluate writes eval.json: beside the SAE this run trained, or under out_dir for
        an SAE given by path (whose folder is left as it is)."""
        if self.sae_path:
            return self.root / f"eval_{Path(self.sae_path).resolve().name}"
        return self.sae_dir

    @property
    def database_url(self) -> str:
        import os

        if self.db_url:
            return self.db_url
        if os.environ.get("DATABASE_URL"):
            return os.environ["DATABASE_URL"]
        return f"sqlite:///{(self.root / 'monosemantic.db').resolve()}"

    @property
    def slug(self) -> str:
        if self.run_name:
            return self.run_name
        if self.sae_path:
            return f"{self.preset}-{Path(self.sae_path).resolve().name}"
        if self.model_path:  # a model of the user's: its name and hook, not our preset
            return f"{self.model_name}-{self.hook}-{self.sae.variant}-{self.sae.d_sae}"
        hook = f"{self.hook}-" if self.hook else ""
        return f"{self.preset}-{hook}{self.sae.variant}-{self.sae.d_sae}"

    @property
    def model_name(self) -> str:
        """Runs of one model share it: the model folder's name, else the run directory's."""
        return Path(self.model_path).name if self.model_path else self.root.name


# ---------------------------------------------------------------------------- presets

# The SAE recipe of Towards Monosemanticity, as fractions of the run (`--preset paper`, or
# `--set` each field); the defaults above are the recipe that works in short runs (README).
PAPER_RECIPE: dict[str, Any] = {
    "variant": "paper",
    "normalize_activations": False,
    "init_norm": 1.0,
    "lr": 1e-3,
    "lr_warmup_fraction": 0.0,
    "lr_decay_fraction": 0.0,
    "l1_coefficient": 0.25,
    "l1_warmup_fraction": 0.05,
    "resample_fractions": (0.025, 0.05, 0.075, 0.1),
    "dead_window_fraction": 0.0125,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The whole chain in well under a minute: for tests.
    "tiny": {
        "corpus": {"max_bytes": 1_500_000},
        "tokenizer": {"vocab_size": 512, "bpe_train_bytes": 1_000_000},
        "model": {"vocab_size": 512, "n_ctx": 64, "d_model": 64, "n_heads": 2, "d_mlp": 128},
        "lm": {
            "n_steps": 60,
            "batch_size": 16,
            "eval_interval": 30,
            "checkpoint_interval": 30,
            "warmup_steps": 10,
        },
        "harvest": {"n_tokens": 40_000, "shard_rows": 16_000, "batch_contexts": 64},
        "sae": {
            "d_in": 128,
            "d_sae": 256,
            "batch_size": 512,
            "n_tokens": 40_000,
            "checkpoint_interval": 20,
        },
        "eval": {"n_tokens": 8_000, "batch_contexts": 32},
        "analysis": {"n_tokens": 20_000, "n_top_examples": 20, "tokens_per_batch": 4096},
    },
    # The whole chain, analysis included, in about 10 minutes on 2 CPU cores.
    "demo": {
        "corpus": {"max_bytes": 48_000_000},
        # 6% held out: about 1M tokens, all of which analysis reads.
        "tokenizer": {"vocab_size": 4096, "bpe_train_bytes": 16_000_000, "val_fraction": 0.06},
        "model": {},
        "lm": {"n_steps": 800, "batch_size": 32, "eval_interval": 100, "checkpoint_interval": 100},
        "harvest": {"n_tokens": 3_000_000},
        # TopK, k 16: the paper's L0 target (below 10-20) with the best CE loss recovered for the
        # budget (README, "SAE quality"); the paper's recipe is `--preset paper` (or its fields).
        "sae": {
            "variant": "topk",
            "k": 16,
            "d_sae": 4096,
            "n_tokens": 3_000_000,
            "batch_size": 4096,
            "checkpoint_interval": 100,
        },
        "eval": {"n_tokens": 200_000},
        "analysis": {"n_tokens": 1_000_000},
    },
    # A/1/4096 as far as a CPU allows: hours.
    "paper": {
        "corpus": {"max_bytes": 400_000_000},
        "tokenizer": {"vocab_size": 4096, "bpe_train_bytes": 64_000_000},
        "model": {"n_ctx": 256},
        "lm": {"n_steps": 40_000, "batch_size": 64, "eval_interval": 1000, "checkpoint_interval": 1000},
        "harvest": {"n_tokens": 100_000_000},
        # The paper's recipe itself (Bricken et al. 2023, appendix): raw activations, tied unit-norm
        # init, a constant lr, fixed λ, neuron resampling at 25k/50k/75k/100k of 1M steps with
        # "dead" = silent for the last 12.5k steps. (The paper's init was untied Kaiming-uniform.)
        "sae": PAPER_RECIPE | {"d_sae": 4096, "n_tokens": 400_000_000, "checkpoint_interval": 2000},
        "eval": {"n_tokens": 1_000_000},
        "analysis": {"n_tokens": 10_000_000},
    },
}


# The demo's model and recipe with the paper's comparisons: four dictionary sizes on model A (feature
# splitting) and model B from another seed with its own 4096-feature SAE (universality). Measured
# from a fresh clone: 31 minutes on 2 cores (README, "The study, measured").
PRESETS["study"] = PRESETS["demo"] | {
    "study": {"sizes": (512, 1024, 2048, 4096), "seed_b": 1, "yardstick_seed": 1}
}
# The paper's preset makes the same comparisons at its own scale (one more size, 8192).
PRESETS["paper"] = PRESETS["paper"] | {"study": {"sizes": (512, 1024, 2048, 4096, 8192), "seed_b": 1}}


STAGE_CLASSES: dict[str, type] = {
    "corpus": CorpusConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "lm": LMTrainConfig,
    "harvest": HarvestConfig,
    "sae": SAEConfig,
    "eval": EvalConfig,
    "analysis": AnalysisConfig,
    "study": StudyConfig,
    "case_studies": CaseStudyConfig,
}


def preset_config(name: str, **overrides: Any) -> RunConfig:
    """Build the RunConfig of a named preset; `overrides` maps 'stage.field' or 'field' to a value."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    stages = {stage: dict(values) for stage, values in PRESETS[name].items()}
    top: dict[str, Any] = {"preset": name, "out_dir": f"runs/{name}"}
    top_fields = {f.name for f in fields(RunConfig)} - set(stages) - set(STAGE_CLASSES)
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:
            stage, attr = key.split(".", 1)
            stages.setdefault(stage, {})[attr] = value
        elif key in top_fields:
            top[key] = value
        else:
            raise ConfigError(
                f"unknown setting {key!r}; top-level settings are {', '.join(sorted(top_fields))}"
            )
    return build_run_config(top, stages)


def build_run_config(top: dict[str, Any], stages: dict[str, dict[str, Any]]) -> RunConfig:
    built: dict[str, Any] = {}
    for stage, cls in STAGE_CLASSES.items():
        values = stages.get(stage, {})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown {stage} setting(s): {', '.join(sorted(unknown))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        built[stage] = cls(**values)
    # The SAE reads the MLP: its width follows the model's unless set explicitly.
    if "d_in" not in stages.get("sae", {}):
        built["sae"] = replace(built["sae"], d_in=built["model"].d_mlp)
    if "vocab_size" not in stages.get("model", {}):
        built["model"] = replace(built["model"], vocab_size=built["tokenizer"].vocab_size)
    return RunConfig(**top, **built)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of any config dataclass."""
    assert is_dataclass(config)  # nosec B101  # narrows the type for mypy; never false
    return dataclasses.asdict(config)  # type: ignore[arg-type]


def from_dict(data: dict[str, Any]) -> RunConfig:
    stage_names = set(STAGE_CLASSES)
    top = {k: v for k, v in data.items() if k not in stage_names}
    stages = {k: v for k, v in data.items() if k in stage_names}
    # Saved configs are complete: keep d_in / vocab_size exactly as written.
    return build_run_config(top, stages)


def save_config(config: RunConfig, path: Path) -> None:
    from trainer.checkpoint import atomic_write_text  # imports torch: not at the CLI's start

    # Atomic: every stage rewrites it first thing, so a kill -9 there must not truncate it.
    atomic_write_text(path, json.dumps(to_dict(config), indent=2))


def load_config(path: Path) -> RunConfig:
    return from_dict(json.loads(Path(path).read_text()))
