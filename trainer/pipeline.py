"""The stages of a run, each a function of the RunConfig, chained by `demo`.

Every stage reads what the previous one wrote under `cfg.out_dir`, so each can be run alone
(and re-run) from the command line. Wall time of each stage is recorded in `timings.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import atomic_write_text
from trainer.config import RunConfig, save_config
from trainer.corpus import build_corpus, iter_documents, load_manifest
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
            cfg.root.mkdir(parents=True, exist_ok=True)
            save_config(cfg, cfg.root / "config.json")
            started = time.perf_counter()
            result = function(cfg, *args, **kwargs)
            elapsed = time.perf_counter() - started
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
