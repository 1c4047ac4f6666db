"""Analyse every feature of a basis (an SAE's features, or the MLP neurons) over held-out tokens,
and store the run in the database — what the paper's interactive feature pages show.

`analyze_run` streams over the val split once through the model and the encoder (memory bounded
by `AnalysisConfig.tokens_per_batch`), keeping only the nonzero activations in an on-disk cache;
cheap passes over that cache add the histograms, the interval samples, every example window's
activations and the top examples' ablation effects (trainer/analysis/). `analyze_and_store` and
`analyze_neurons_and_store` wrap it with the database protocol of trainer/store/database.py; what both read
(the run's config, model, tokenizer and held-out tokens) is one `AnalysisInputs`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from trainer.analysis.ablation import ablation_effects, ablation_summary, effect_rows
from trainer.analysis.feature_map import feature_map
from trainer.analysis.interpretability import (
    RANDOM_MODELS,
    InterpretabilityResult,
    interpret_units,
    randomised_logit_weights,
)
from trainer.analysis.rows import (
    concat_windows,
    density_histogram,
    example_rows,
    feature_rows,
    token_feature_rows,
    windows_of,
)
from trainer.analysis.stats import (
    FirstPassAccumulator,
    fill_window_activations,
    second_pass,
)
from trainer.analysis.stream import Encode, SparseCache, encode_stream
from trainer.config import AnalysisConfig, RunConfig, to_dict
from trainer.lm.hooks import OWN_LOGIT_NOTE, HookedLM, OneLayerHooked, as_hooked
from trainer.lm.model import OneLayerTransformer
from trainer.store.database import insert_rows, open_database, pending_run, update_run
from trainer.store.schema import (
    Example,
    ExampleEffect,
    Feature,
    Interpretation,
    RunFinding,
    Token,
    TokenFeature,
    display_token,
    token_text,
)

Progress = Callable[[str, int, int], None]  # (stage, done, total): for tests and UIs
LOGIT_NOTE_KEY = "logit_effects"  # in Run.metrics: how the logit effects reach the logits


class SAELike(Protocol):
    @property
    def W_dec(self) -> torch.Tensor: ...

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Basis:
    """What is analysed: `encode` maps hook activations [N, d_in] to [N, n_features]; `decoder`
    [n_features, d_in] gives logit effects; `neighbour_vectors` the similarity between features;
    x̂ = f · decoder + `decoder_bias` the reconstruction that ablations remove a feature from (None:
    the neurons, whose reconstruction is the MLP output itself)."""

    kind: str  # 'sae' | 'neurons'
    encode: Encode
    decoder: torch.Tensor
    neighbour_vectors: torch.Tensor
    decoder_bias: torch.Tensor | None = None

    @property
    def n_features(self) -> int:
        return int(self.decoder.shape[0])


def sae_basis(sae: SAELike) -> Basis:
    decoder = sae.W_dec.detach().float()
    bias = getattr(sae, "b_dec", None)
    bias = torch.zeros(decoder.shape[1]) if bias is None else bias.detach().float()
    return Basis("sae", sae.encode, decoder, decoder, bias)


def neuron_basis(model: OneLayerTransformer | HookedLM) -> Basis:
    """The MLP neurons: identity encoder, unit decoder rows; decoder cosines are all zero, so
    neighbours compare what each neuron writes into the residual stream (its W_out column)."""
    lm = as_hooked(model)
    vectors = lm.neuron_vectors()
    if vectors is None:
        raise ValueError(f"the coordinates of {lm.hook} are not neurons: no neuron basis there")
    return Basis("neurons", lambda x: x, torch.eye(lm.d_in), vectors.detach().float())


@dataclass
class RunAnalysis:
    n_tokens: int
    features: list[dict[str, Any]]  # Feature columns (no run_id)
    examples: list[dict[str, Any]]  # Example columns (no run_id)
    token_features: list[dict[str, Any]]  # TokenFeature columns (no run_id)
    density_histogram: dict[str, Any]
    effects: list[dict[str, Any]] = field(default_factory=list)  # ExampleEffect columns (no run_id)
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)  # RunFinding data by key
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    cache_bytes: int = 0
    interpretability: InterpretabilityResult | None = None
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU seconds per stage


class StageClock:
    """Wall and CPU seconds of each analysis stage (CPU: the process's, all threads)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.start()

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self, stage: str) -> None:
        self.wall[stage] = time.perf_counter() - self._wall
        self.cpu[stage] = time.process_time() - self._cpu


def usable_tokens(val_tokens: np.ndarray, cfg: AnalysisConfig, n_ctx: int) -> np.ndarray:
    """The analysed stream: the first n_tokens of the split, cut to whole n_ctx windows."""
    n = min(cfg.n_tokens, len(val_tokens)) // n_ctx * n_ctx
    if n == 0:
        raise ValueError(
            f"need at least one window of {n_ctx} held-out tokens to analyse; have {len(val_tokens)}"
        )
    return val_tokens[:n]


def _stage(name: str, total: int, progress: Progress | None, unit: str = "batch") -> Callable[[int], None]:
    bar = tqdm(total=total, desc=name, unit=unit, leave=False)
    done = 0

    def step(n: int = 1) -> None:
        nonlocal done
        done += n
        bar.update(n)
        if done >= total:
            bar.close()
        if progress is not None:
            progress(name, done, total)

    return step


def _tracked(items: Iterator[Any] | Any, step: Callable[[int], None]) -> Iterator[Any]:
    for item in items:
        yield item
        step(1)


@torch.no_grad()
def analyze_run(
    model: OneLayerTransformer | HookedLM,
    basis: Basis,
    val_tokens: np.ndarray,
    cfg: AnalysisConfig,
    token_texts: list[str] | None = None,
    progress: Progress | None = None,
    cache_dir: str | Path | None = None,
    token_bytes: list[bytes] | None = None,
) -> RunAnalysis:
    """Every feature's statistics, examples and summaries over the first cfg.n_tokens of `val_tokens`."""
    lm = as_hooked(model)
    if basis.decoder.shape[1] != lm.d_in:
        raise ValueError(
            f"the basis reads {basis.decoder.shape[1]} inputs but the model's {lm.hook} has {lm.d_in}"
        )
    n_ctx, vocab, n_features = lm.n_ctx, lm.vocab_size, basis.n_features
    tokens = usable_tokens(val_tokens, cfg, n_ctx)
    texts = token_texts if token_texts is not None else [str(i) for i in range(vocab)]
    clock = StageClock()
    was_training = lm.module.training
    lm.module.eval()
    encoder_module = getattr(basis.encode, "__self__", None)
    encoder_training = isinstance(encoder_module, torch.nn.Module) and encoder_module.training
    if isinstance(encoder_module, torch.nn.Module):
        encoder_module.eval()  # batchtopk's inference threshold
    try:
        with SparseCache(n_features, cache_dir) as cache:
            # Pass 1: encode, keep the sparse activations, counts, sums, top-k, token tables.
            clock.start()
            batch_tokens = max(1, cfg.tokens_per_batch // n_ctx) * n_ctx
            n_batches = math.ceil(len(tokens) / batch_tokens)
            step = _stage("analysis: encode", n_batches, progress)
            first = FirstPassAccumulator(n_features, vocab, cfg.n_top_examples)
            for batch, raw, ids in encode_stream(
                lm, basis.encode, tokens, n_ctx, cfg.tokens_per_batch, cfg.dtype
            ):
                first.add(batch, ids)
                cache.append(batch, raw)
                step(1)
            stats = first.result
            clock.stop("encode")

            # Pass 2: histograms and interval samples, now that each maximum is known.
            clock.start()
            step = _stage("analysis: histograms", n_batches, progress)
            second = second_pass(
                _tracked(cache, step),
                stats.max_activation,
                cfg.histogram_bins,
                cfg.n_intervals,
                cfg.examples_per_interval,
                cfg.seed,
            )
            clock.stop("histograms")

            # Pass 3: the activations on every token of every example window.
            clock.start()
            top_windows = windows_of(stats.top.positions, None, len(tokens), cfg)
            interval_windows = windows_of(second.intervals.positions, cfg.n_intervals, len(tokens), cfg)
            both = concat_windows(top_windows, interval_windows)
            step = _stage("analysis: examples", n_batches, progress)
            fill_window_activations(both, _tracked(cache, step), n_features)
            clock.stop("examples")

            # Pass 4: the top examples' ablation effects (the underlines of the feature pages).
            clock.start()
            n_top = int(top_windows.features.numel())
            top_windows.activations = both.activations[:n_top]
            step = _stage("analysis: ablations", n_batches, progress)
            if isinstance(lm, OneLayerHooked):
                effects = ablation_effects(
                    lm.module,
                    top_windows,
                    tokens,
                    val_tokens,
                    _tracked(cache, step),
                    basis.decoder,
                    basis.decoder_bias,
                )
            else:  # ablations run on our own model only (yet): NaN, not computed
                effects = torch.full(top_windows.valid.shape, float("nan"))
            clock.stop("ablations")
            # Passes 5-6: automatic interpretability, explained on even contexts, scored on odd ones.
            clock.start()
            n_top = int(top_windows.features.numel())
            interpretability = interpret_units(
                cache,
                tokens,
                n_ctx,
                vocab,
                stats.token_activation_sum,
                both.head(n_top),
                basis.decoder,
                lm.logit_weights().detach(),
                cfg,
                texts,
                log=lambda line: tqdm.write(f"{basis.kind}: {line}"),
                random_logit_weights=[
                    weights
                    for i in range(RANDOM_MODELS)
                    if isinstance(lm, OneLayerHooked)
                    and (weights := randomised_logit_weights(lm.module, cfg.seed + i)) is not None
                ],
                token_bytes=token_bytes,
            )
            clock.stop("interpretability")
            cache_bytes = cache.n_bytes

        clock.start()
        examples = example_rows(both, tokens, cfg, n_top)
        effect_table = effect_rows(top_windows, effects)
        findings = {"ablation": ablation_summary(top_windows, effects)}
        findings["interpretability"] = interpretability.summary  # medians, intervals, logit baseline
        features = feature_rows(
            lm.logit_weights().detach(),
            basis.decoder,
            basis.neighbour_vectors,
            stats,
            second,
            texts,
            cfg,
        )
        token_features = token_feature_rows(stats, cfg.n_token_features)
        clock.stop("summaries")
        clock.start()
        coordinates = feature_map(basis.neighbour_vectors, cfg.seed)
        if coordinates is not None:
            for row, (x, y) in zip(features, coordinates.tolist(), strict=True):
                row["map_x"], row["map_y"] = x, y
        clock.stop("map")
    finally:
        lm.module.train(was_training)
        if isinstance(encoder_module, torch.nn.Module):
            encoder_module.train(encoder_training)
    density = stats.fire_count.double() / len(tokens)
    return RunAnalysis(
        len(tokens),
        features,
        examples,
        token_features,
        density_histogram(density, len(tokens)),
        effect_table,
        findings,
        clock.wall,
        cache_bytes,
        interpretability,
        clock.cpu,
    )


# ---------------------------------------------------------------------------- database


def token_rows(token_bytes: list[bytes]) -> list[dict[str, Any]]:
    rows = []
    for token_id, raw in enumerate(token_bytes):
        text = token_text(raw)
        rows.append({"token_id": token_id, "raw": raw, "text": text, "display": display_token(text)})
    return rows


def _token_bytes(tokenizer: Any) -> list[bytes]:
    if isinstance(tokenizer, list):
        return tokenizer
    from trainer.corpus.tokenizer import token_bytes

    return token_bytes(tokenizer)


@dataclass(frozen=True)
class AnalysisInputs:
    """What both analyses of a run read and record (its SAE's features and its model's neurons):
    built once from the run's config by `monosemantic.pipeline.run_analyze`."""

    cfg: RunConfig
    model: OneLayerTransformer | HookedLM
    tokenizer: Any  # a tokenizers.Tokenizer or its token bytes
    val_tokens: np.ndarray
    corpus_manifest: dict[str, Any] = field(default_factory=dict)
    db_url: str | None = None  # default cfg.database_url
    model_name: str | None = None  # default cfg.model_name
    artifacts_path: str | None = None  # default the run's folder for our own model (`_artifacts`)
    progress: Progress | None = None

    @property
    def name(self) -> str:
        return self.model_name or self.cfg.model_name


def _store(
    inputs: AnalysisInputs,
    basis: Basis,
    slug: str,
    variant: str,
    metrics: dict[str, Any] | None,
    training_log: dict[str, Any] | None,
    sae_path: str | None,
) -> int:
    cfg, progress = inputs.cfg, inputs.progress
    lm = as_hooked(inputs.model)
    vocab_bytes = _token_bytes(inputs.tokenizer)
    if len(vocab_bytes) < lm.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(vocab_bytes)} tokens but the model's vocabulary is {lm.vocab_size}"
        )
    metrics = metrics or {}
    if lm.logit_effects_note != OWN_LOGIT_NOTE:  # pages say how the logit effects were reached
        metrics = {**metrics, LOGIT_NOTE_KEY: lm.logit_effects_note}
    engine = open_database(inputs.db_url or cfg.database_url)
    try:
        with pending_run(
            engine,
            slug,
            kind=basis.kind,
            d_in=lm.d_in,
            n_features=basis.n_features,
            config=_stored_config(cfg),
            model_name=inputs.name,
            variant=variant,
            metrics=metrics,
            training_log=training_log or {},
            corpus_manifest=inputs.corpus_manifest or {},
            artifacts_path=inputs.artifacts_path or _artifacts(cfg),
            sae_path=sae_path,
        ) as run_id:
            if progress is not None:
                progress("run created", 0, 1)
            texts = [raw.decode("utf-8", "replace") for raw in vocab_bytes]
            analysis = analyze_run(
                lm, basis, inputs.val_tokens, cfg.analysis, texts, progress, token_bytes=list(vocab_bytes)
            )
            update_run(
                engine,
                run_id,
                n_tokens_analyzed=analysis.n_tokens,
                density_histogram=analysis.density_histogram,
            )
            tables: list[tuple[type, list[dict[str, Any]]]] = [
                (Token, token_rows(vocab_bytes)),
                (Feature, analysis.features),
                (TokenFeature, analysis.token_features),
                (Example, analysis.examples),
                (ExampleEffect, analysis.effects),
                (RunFinding, [{"key": key, "data": data} for key, data in analysis.findings.items()]),
                (Interpretation, analysis.interpretability.rows if analysis.interpretability else []),
            ]
            step = _stage("database: write", sum(len(rows) for _, rows in tables), progress, unit="row")
            for table, rows in tables:
                insert_rows(engine, table, run_id, rows, on_batch=step)
        return run_id
    finally:
        engine.dispose()


def _artifacts(cfg: RunConfig) -> str | None:
    """The folder holding tokenizer.json and lm/ for the app's live inference; None for a
    transformers model, which the app finds through the stored config (`_stored_config`)."""
    return None if cfg.model_path else str(cfg.root.resolve())


def _stored_config(cfg: RunConfig) -> dict[str, Any]:
    """The run's config as the database keeps it: a local model folder as an absolute path, so
    the app's live pages (run from any directory) load the model the run was analysed on."""
    if cfg.model_path and Path(cfg.model_path).is_dir():
        cfg = dataclasses.replace(cfg, model_path=str(Path(cfg.model_path).resolve()))
    return to_dict(cfg)


def analyze_and_store(
    inputs: AnalysisInputs,
    sae: SAELike,
    metrics: dict[str, Any] | None = None,
    training_log: dict[str, Any] | None = None,
    slug: str | None = None,
    sae_path: str | None = None,
) -> int:
    """Analyse an SAE's features and publish them as run `slug` (default cfg.slug), replacing any
    run of that slug; returns the run id."""
    lm = as_hooked(inputs.model)
    d_in = int(sae.W_dec.shape[1])
    if d_in != lm.d_in:
        raise ValueError(
            f"the SAE reads {d_in}-dimensional inputs but the model's {lm.hook} has {lm.d_in}: "
            "this SAE was not trained on this model"
        )
    variant = getattr(getattr(sae, "cfg", None), "variant", "sae")
    cfg = inputs.cfg
    sae_path = sae_path or str(cfg.sae_dir.resolve())
    return _store(inputs, sae_basis(sae), slug or cfg.slug, variant, metrics, training_log, sae_path)


def analyze_neurons_and_store(
    inputs: AnalysisInputs,
    metrics: dict[str, Any] | None = None,
    training_log: dict[str, Any] | None = None,
    slug: str | None = None,
) -> int:
    """The same analysis for the model's MLP neurons, as a run of kind 'neurons' (default slug
    '<model_name>-neurons'); returns the run id."""
    basis = neuron_basis(inputs.model)
    return _store(inputs, basis, slug or f"{inputs.name}-neurons", "neurons", metrics, training_log, None)
