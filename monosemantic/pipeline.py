"""The stages of a run, each a function of the RunConfig, chained by `demo`.

Every stage reads what the previous one wrote under `cfg.out_dir`, so each can be run alone
(and re-run) from the command line. Wall time of each stage is recorded in `timings.json` (summed
over the stage's runs within one command, e.g. one `train-sae` per dictionary size).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import atomic_write_text
from trainer.config import RunConfig, save_config
from trainer.corpus.text import build_corpus, iter_documents, load_manifest
from trainer.corpus.tokenizer import (
    encode_documents,
    load_token_meta,
    load_token_split,
    load_tokenizer,
    train_tokenizer,
)
from trainer.distributed import init_from_env, is_main_process, rank_device
from trainer.lm.hooks import HookedLM, OneLayerHooked, check_own_hook
from trainer.lm.model import OneLayerTransformer
from trainer.provenance import check_same_model, run_model

_TIMED_THIS_PROCESS: set[tuple[Path, str]] = set()


def load_lm(cfg: RunConfig, device: str | None = None) -> HookedLM:
    """The run's language model at its hook: `cfg.model_path` (a transformers model) if set,
    else our trained one-layer model under cfg.lm_dir. (Here, above trainer.lm.hooks and
    trainer.lm.hf_model, which build one each: hf_model imports hooks, never the other way.)"""
    device = device or cfg.device
    if cfg.model_path:
        from trainer.lm.hf_model import load_hooked  # transformers only for a run that names a model

        assert cfg.hook is not None  # RunConfig requires a hook with a model path  # nosec B101
        return load_hooked(cfg.model_path, cfg.hook, n_ctx=cfg.model.n_ctx, device=device)
    check_own_hook(cfg.hook)
    return OneLayerHooked(OneLayerTransformer.load(cfg.lm_dir).to(device))


def _record_timing(cfg: RunConfig, stage: str, seconds: float) -> None:
    """Write the stage's wall time to `timings.json`. A stage that runs more than once in one
    command (`train-sae` for every size of a study) records the sum; a later command replaces it."""
    path = cfg.root / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    key = (path.resolve(), stage)
    if key in _TIMED_THIS_PROCESS:
        seconds += float(timings.get(stage, 0.0))
    _TIMED_THIS_PROCESS.add(key)
    timings[stage] = round(seconds, 1)
    atomic_write_text(path, json.dumps(timings, indent=2))


def timed(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        def run(cfg: RunConfig, *args: Any, **kwargs: Any) -> Any:
            main = is_main_process()  # under torchrun, rank 0 alone writes files
            cfg.root.mkdir(parents=True, exist_ok=True)
            if main:
                save_config(cfg, cfg.root / "config.json")
            started = time.perf_counter()
            result = function(cfg, *args, **kwargs)
            elapsed = time.perf_counter() - started
            if main:
                _record_timing(cfg, stage, elapsed)
                print(f"[{stage}] done in {elapsed:.1f}s")
            return result

        run.__name__ = function.__name__
        run.__doc__ = function.__doc__
        return run

    return wrap


@timed("corpus")
def run_corpus(cfg: RunConfig) -> dict[str, Any]:
    """Build the corpus, then the tokenizer (trained, or the user's) and the token arrays."""
    manifest = build_corpus(cfg.corpus, cfg.corpus_dir)
    if cfg.model_path:
        return {**manifest, "tokens": _encode_for_model(cfg, manifest)}
    if cfg.tokenizer.tokenizer_path:
        tokenizer = load_tokenizer(Path(cfg.tokenizer.tokenizer_path))
    else:

        def bpe_sample() -> Any:
            taken = 0
            for doc in iter_documents(cfg.corpus_dir):
                taken += len(doc)
                if taken > cfg.tokenizer.bpe_train_bytes:
                    return
                yield doc

        tokenizer = train_tokenizer(bpe_sample(), cfg.tokenizer)
    if tokenizer.get_vocab_size() != cfg.model.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens but model.vocab_size is "
            f"{cfg.model.vocab_size}; pass --vocab-size {tokenizer.get_vocab_size()}"
        )
    cfg.root.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(cfg.tokenizer_path))
    meta = encode_documents(
        tokenizer,
        iter_documents(cfg.corpus_dir),
        cfg.tokens_dir,
        cfg.tokenizer.val_fraction,
        seed=cfg.corpus.seed,
        total_docs=int(manifest["documents"]),
    )
    print(
        f"corpus: {manifest['total_bytes'] / 1e6:.1f} MB in {manifest['documents']} documents -> "
        f"{meta['n_train']:,} training and {meta['n_val']:,} held-out tokens"
    )
    return {**manifest, "tokens": meta}


def _encode_for_model(cfg: RunConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """Tokenise the corpus with the transformers model's own tokenizer."""
    from trainer.lm.hf_model import load_tokenizer as load_model_tokenizer
    from trainer.lm.hf_model import tokenizer_info

    assert cfg.model_path is not None  # nosec B101  # narrows the type for mypy
    info = tokenizer_info(load_model_tokenizer(cfg.model_path))
    meta = encode_documents(
        info.backend,
        iter_documents(cfg.corpus_dir),
        cfg.tokens_dir,
        cfg.tokenizer.val_fraction,
        seed=cfg.corpus.seed,
        total_docs=int(manifest["documents"]),
        model_path=cfg.model_path,
        eot=info.eot_id,
    )
    print(
        f"corpus: {manifest['total_bytes'] / 1e6:.1f} MB in {manifest['documents']} documents -> "
        f"{meta['n_train']:,} training and {meta['n_val']:,} held-out tokens of {cfg.model_path}"
    )
    return meta


def _model_key(path_or_id: Any) -> Any:
    return str(Path(path_or_id).resolve()) if path_or_id and Path(path_or_id).is_dir() else path_or_id


def token_meta(cfg: RunConfig) -> dict[str, Any]:
    """The tokenised corpus's meta, checked to be tokenised for this run's model."""
    meta = load_token_meta(cfg.tokens_dir)
    if _model_key(meta.get("model_path")) != _model_key(cfg.model_path):
        tokenised_for = meta.get("model_path") or "our own BPE tokenizer"
        flag = f" --model {cfg.model_path}" if cfg.model_path else ""
        raise ValueError(
            f"the corpus in {cfg.tokens_dir} is tokenised for {tokenised_for}, not for this run's model: "
            f"run `monosemantic corpus{flag} --out-dir {cfg.out_dir}` first"
        )
    return meta


@timed("train-lm")
def run_train_lm(cfg: RunConfig, resume: bool = False) -> Any:
    """Train the one-layer transformer on the training split."""
    from trainer.lm.train import train_lm

    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = train_lm(
        cfg.model,
        cfg.lm,
        load_token_split(cfg.tokens_dir, "train"),
        load_token_split(cfg.tokens_dir, "val"),
        cfg.lm_dir,
        resume=resume,
    )
    print(
        f"train-lm: val loss {result.val_loss:.3f} after {result.steps} steps "
        f"({result.tokens_per_second:,.0f} tokens/s)"
    )
    return result


@timed("harvest")
def run_harvest(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Harvest the activations at the hook (our model's MLP by default) over the training split."""
    from trainer.harvest import harvest

    meta = token_meta(cfg)
    model = run_model(cfg)
    # Our model harvests on the CPU in the training dtype; a transformers model on cfg.device, in
    # the compute dtype its loader chose (bf16 where the hardware has it).
    lm = load_lm(cfg, device=cfg.device if cfg.model_path else "cpu")
    return harvest(
        lm,
        load_token_split(cfg.tokens_dir, "train"),
        int(meta["eot_id"]),
        cfg.harvest,
        cfg.activations_dir,
        dtype="fp32" if cfg.model_path else cfg.lm.dtype,
        resume=resume,
        model_digest=model.digest if model else None,
    )


def corpus_manifest(cfg: RunConfig) -> dict[str, Any]:
    return load_manifest(cfg.corpus_dir)


@timed("train-sae")
def run_train_sae(cfg: RunConfig, resume: bool = False, activations_file: str | None = None) -> Any:
    """Train the SAE on the harvested activations (or on a user's activation file); data-parallel
    over the processes when launched by `torchrun --nproc-per-node N`."""
    from trainer.sae import train_sae

    source = Path(activations_file) if activations_file else cfg.activations_dir
    if not activations_file and not (source / "manifest.json").exists():
        raise FileNotFoundError(f"no harvested activations at {source} (run `monosemantic harvest` first)")
    if (source / "manifest.json").is_file():  # a harvest: of this run's model, if it has one
        check_same_model(
            json.loads((source / "manifest.json").read_text()),
            run_model(cfg),
            f"the activations in {source}",
            "harvest again with this model, or train with the run of the model they came from",
            warn_unrecorded=True,
        )
    with init_from_env(cfg.device):
        result = train_sae(cfg, source, cfg.sae_dir, resume=resume, device=rank_device(cfg.device))
    if result.final is not None and is_main_process():
        print(
            f"train-sae: {cfg.sae.variant} {result.sae.cfg.d_in}->{cfg.sae.d_sae}, mse {result.final.mse:.4g}"
            f" (normalised inputs), L0 {result.final.l0:.1f}, dead {result.final.dead}"
            + (
                f", λ {result.sae.training_record['sparsity_coefficient']:.4g}"
                if result.sae.variant.uses_sparsity_coefficient
                else ""
            )
            + f", saved to {cfg.sae_dir}"
        )
    return result


@timed("evaluate")
def run_evaluate(cfg: RunConfig) -> dict[str, Any]:
    """Evaluate the SAE on held-out text; writes eval.json beside the SAE."""
    from trainer.evaluate import evaluate_sae
    from trainer.sae import SparseAutoencoder

    token_meta(cfg)
    sae = SparseAutoencoder.load(cfg.sae_dir).to(cfg.device)
    lm = load_lm(cfg)
    _check_sae_fits(lm, sae)
    _check_sae_model(cfg, sae)
    result = evaluate_sae(
        lm, sae, load_token_split(cfg.tokens_dir, "val"), cfg.eval, lm.n_ctx, out_dir=cfg.eval_dir
    )
    metrics = result.to_dict()
    print(
        "evaluate: "
        + ", ".join(
            f"{k} {metrics[k]:.4g}"
            for k in (
                "mse",
                "fvu",
                "l0",
                "dead_fraction",
                "dense_fraction",
                "ce_loss_recovered",
                "ce_loss_recovered_mean",
            )
        )
    )
    return metrics


def _check_sae_fits(lm: Any, sae: Any) -> None:
    from trainer.sae.saelens_format import check_sae_fits

    what = "the model's MLP" if isinstance(lm, OneLayerHooked) else f"the model's {lm.hook}"
    check_sae_fits(sae, lm.d_in, lm.hook, what=what)


def _check_sae_model(cfg: RunConfig, sae: Any) -> None:
    """Refuse an SAE whose training record names another model than the run's (trainer/provenance.py)."""
    check_same_model(
        sae.training_record,
        run_model(cfg),
        f"the activations the SAE in {cfg.sae_dir} was trained on",
        "train it again on this model's activations, or use the run of the model they came from",
        warn_unrecorded=False,
    )


def check_sae_path(cfg: RunConfig) -> None:
    """For `--sae PATH`: refuse, before any stage writes a file, an SAE folder that cannot be
    read or does not fit the run's model (its d_in or hook)."""
    from trainer.sae import SparseAutoencoder

    if not cfg.sae_path:
        return
    if not cfg.model_path and not (cfg.lm_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"no model at {cfg.lm_dir}: --sae needs the run's model (see --out-dir)")
    _check_sae_fits(load_lm(cfg, device="cpu"), SparseAutoencoder.load(cfg.sae_dir))


def lm_val_loss(cfg: RunConfig) -> float | None:
    if cfg.model_path:  # a model trained elsewhere
        return None
    path = cfg.lm_dir / "training_log.json"
    if not path.exists():
        return None
    losses = [row["val_loss"] for row in json.loads(path.read_text()) if "val_loss" in row]
    return losses[-1] if losses else None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


@timed("analyze")
def run_analyze(cfg: RunConfig, neurons: bool = True) -> tuple[int, int | None]:
    """Analyse every SAE feature and (unless `neurons` is False) every MLP neuron into the database
    (two runs; one, the SAE's, at a hook whose coordinates are not neurons)."""
    from trainer.analysis.analyze import AnalysisInputs, analyze_and_store, analyze_neurons_and_store
    from trainer.sae import SparseAutoencoder

    token_meta(cfg)
    sae = SparseAutoencoder.load(cfg.sae_dir)
    model = load_lm(cfg, device="cpu")
    _check_sae_fits(model, sae)
    _check_sae_model(cfg, sae)
    if cfg.sae_path:  # the stored config describes the SAE that was analysed
        cfg = dataclasses.replace(cfg, sae=sae.cfg)
    tokenizer: Any
    if cfg.model_path:
        from trainer.lm.hf_model import load_tokenizer as load_model_tokenizer
        from trainer.lm.hf_model import token_bytes

        tokenizer = token_bytes(load_model_tokenizer(cfg.model_path), model.vocab_size)
    else:
        tokenizer = load_tokenizer(cfg.tokenizer_path)
    inputs = AnalysisInputs(
        cfg, model, tokenizer, load_token_split(cfg.tokens_dir, "val"), corpus_manifest=corpus_manifest(cfg)
    )
    lm_log = [] if cfg.model_path else _read_json(cfg.lm_dir / "training_log.json") or []
    lm_metrics = {"lm_val_loss": lm_val_loss(cfg)}
    sae_metrics = {**(_read_json(cfg.eval_dir / "eval.json") or {}), **lm_metrics}
    sae_run = analyze_and_store(
        inputs,
        sae,
        metrics=sae_metrics,
        training_log={"sae": _read_json(cfg.sae_dir / "training_log.json") or {}, "lm": lm_log},
    )
    if not neurons or model.neuron_vectors() is None:
        print(f"analyze: wrote run '{cfg.slug}' to {cfg.database_url}")
        neuron_run = None
    else:
        neuron_run = analyze_neurons_and_store(
            inputs,
            metrics=lm_metrics,
            training_log={"lm": lm_log},
            slug=f"{cfg.model_name}-{cfg.hook}-neurons" if cfg.model_path else None,
        )
        print(f"analyze: wrote runs '{cfg.slug}' and its neurons to {cfg.database_url}")
    if not cfg.model_path:  # our own model: the case studies (trainer/analysis/case_study_runs.py)
        _case_studies(cfg)
    return sae_run, neuron_run


def _case_studies(cfg: RunConfig) -> None:
    from trainer.analysis.case_study_runs import run_case_studies
    from trainer.store.database import open_database

    engine = open_database(cfg.database_url)
    try:
        report = run_case_studies(engine, cfg.slug, cfg.case_studies)
    finally:
        engine.dispose()
    for line in report.lines():
        print(f"case studies: {line}")


@timed("prerender")
def run_prerender(cfg: RunConfig) -> Any:
    """Render every page of the database's complete runs into it, so the browser serves them
    without rendering (pages this version of the app stored before are kept)."""
    from app.pages.prerender import prerender

    result = prerender(cfg.database_url, processes=os.cpu_count() or 1)
    print(result.summary())
    return result
