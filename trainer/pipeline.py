"""The stages of a run, each a function of the RunConfig, chained by `demo`.

Every stage reads what the previous one wrote under `cfg.out_dir`, so each can be run alone
(and re-run) from the command line. Wall time of each stage is recorded in `timings.json`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import atomic_write_text
from trainer.config import RunConfig, save_config
from trainer.corpus import build_corpus, iter_documents, load_manifest
from trainer.distributed import init_from_env, is_main_process, rank_device
from trainer.tokenizer import (
    encode_documents,
    load_token_meta,
    load_token_split,
    load_tokenizer,
    train_tokenizer,
)


def _record_timing(cfg: RunConfig, stage: str, seconds: float) -> None:
    path = cfg.root / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
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


@timed("train-lm")
def run_train_lm(cfg: RunConfig, resume: bool = False) -> Any:
    """Train the one-layer transformer on the training split."""
    from trainer.train_lm import train_lm

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
    """Harvest the MLP activations of the trained model over the training split."""
    from trainer.activations import harvest
    from trainer.model import OneLayerTransformer

    model = OneLayerTransformer.load(cfg.lm_dir)
    meta = load_token_meta(cfg.tokens_dir)
    return harvest(
        model,
        load_token_split(cfg.tokens_dir, "train"),
        int(meta["eot_id"]),
        cfg.harvest,
        cfg.activations_dir,
        dtype=cfg.lm.dtype,
        resume=resume,
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
    from trainer.model import OneLayerTransformer
    from trainer.sae import SparseAutoencoder

    model = OneLayerTransformer.load(cfg.lm_dir).to(cfg.device)
    sae = SparseAutoencoder.load(cfg.sae_dir).to(cfg.device)
    _check_sae_fits(model, sae)
    result = evaluate_sae(
        model, sae, load_token_split(cfg.tokens_dir, "val"), cfg.eval, model.cfg.n_ctx, out_dir=cfg.sae_dir
    )
    metrics = result.to_dict()
    print(
        "evaluate: "
        + ", ".join(
            f"{k} {metrics[k]:.4g}"
            for k in ("mse", "fvu", "l0", "dead_fraction", "dense_fraction", "ce_loss_recovered")
        )
    )
    return metrics


def _check_sae_fits(model: Any, sae: Any) -> None:
    if sae.cfg.d_in != model.cfg.d_mlp:
        raise ValueError(
            f"the SAE reads {sae.cfg.d_in}-d activations but the model's MLP has {model.cfg.d_mlp} "
            "neurons: train the SAE on this model's activations"
        )


def lm_val_loss(cfg: RunConfig) -> float | None:
    path = cfg.lm_dir / "training_log.json"
    if not path.exists():
        return None
    losses = [row["val_loss"] for row in json.loads(path.read_text()) if "val_loss" in row]
    return losses[-1] if losses else None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


@timed("analyze")
def run_analyze(cfg: RunConfig, neurons: bool = True) -> tuple[int, int | None]:
    """Analyse every SAE feature and (unless `neurons` is False) every MLP neuron into the
    database (two runs)."""
    from trainer.analyze import analyze_and_store, analyze_neurons_and_store
    from trainer.model import OneLayerTransformer
    from trainer.sae import SparseAutoencoder

    model = OneLayerTransformer.load(cfg.lm_dir)
    sae = SparseAutoencoder.load(cfg.sae_dir)  # analyze_and_store checks that it fits the model
    tokenizer = load_tokenizer(cfg.tokenizer_path)
    val_tokens = load_token_split(cfg.tokens_dir, "val")
    lm_log = _read_json(cfg.lm_dir / "training_log.json") or []
    lm_metrics = {"lm_val_loss": lm_val_loss(cfg)}
    sae_metrics = {**(_read_json(cfg.sae_dir / "eval.json") or {}), **lm_metrics}
    manifest = corpus_manifest(cfg)
    sae_run = analyze_and_store(
        cfg,
        model,
        sae,
        tokenizer,
        val_tokens,
        metrics=sae_metrics,
        training_log={"sae": _read_json(cfg.sae_dir / "training_log.json") or {}, "lm": lm_log},
        corpus_manifest=manifest,
    )
    if not neurons:
        print(f"analyze: wrote run '{cfg.slug}' to {cfg.database_url}")
        return sae_run, None
    neuron_run = analyze_neurons_and_store(
        cfg,
        model,
        tokenizer,
        val_tokens,
        metrics=lm_metrics,
        training_log={"lm": lm_log},
        corpus_manifest=manifest,
    )
    print(f"analyze: wrote runs '{cfg.slug}' and its neurons to {cfg.database_url}")
    return sae_run, neuron_run


@timed("prerender")
def run_prerender(cfg: RunConfig) -> Any:
    """Render every page of the database's complete runs into it, so the browser serves them
    without rendering (pages this version of the app stored before are kept)."""
    from app.prerender import prerender

    result = prerender(cfg.database_url, processes=os.cpu_count() or 1)
    print(result.summary())
    return result
