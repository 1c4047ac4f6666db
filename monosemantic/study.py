"""The stages of a run, expanded for the paper's comparisons (`StudyConfig`).

With `study.sizes`, train-sae, evaluate and analyze run once per dictionary size on the same
harvested activations (one SAE folder and one database run per size; the neurons are analysed
once). With `study.yardstick_seed`, a second SAE of the main size is trained on the same
activations from another seed and matched with the first: universality's yardstick (relation
'sae-seeds'). With `study.seed_b`, model B (the same shape, data and schedule, another seed) gets its
own folder under the run's (sharing the corpus and tokens), its own LM, activations, SAE of the
main size and analysis. `analyze` then matches the runs: every pair of sizes (feature splitting)
and A against B, for features and for neurons (universality), and places every size on one
map (trainer/analysis/size_map.py).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from monosemantic import pipeline
from trainer.config import ConfigError, RunConfig, StudyConfig

SHARED = ("corpus", "tokens", "tokenizer.json")  # what model B takes from model A's folder


def size_configs(cfg: RunConfig) -> list[RunConfig]:
    """One config per dictionary size; the main size (sae.d_sae) keeps cfg itself, first."""
    sizes = [cfg.sae.d_sae, *(s for s in cfg.study.sizes if s != cfg.sae.d_sae)]
    out = [cfg]
    for size in sizes[1:]:
        name = f"{cfg.run_name}-{size}" if cfg.run_name else None
        out.append(replace(cfg, sae=replace(cfg.sae, d_sae=size, k=min(cfg.sae.k, size)), run_name=name))
    return out


def model_b_config(cfg: RunConfig) -> RunConfig | None:
    """Model B's config: A's with another seed everywhere, in `<out_dir>/<name>-b`, writing to the
    same database; None without study.seed_b."""
    seed = cfg.study.seed_b
    if seed is None:
        return None
    root = cfg.root / f"{cfg.root.resolve().name}-b"
    return replace(
        cfg,
        out_dir=str(root),
        db_url=cfg.database_url,
        run_name=f"{cfg.slug}-b",
        lm=replace(cfg.lm, seed=seed),
        harvest=replace(cfg.harvest, seed=seed),
        sae=replace(cfg.sae, seed=seed),
        study=StudyConfig(),
    )


def yardstick_config(cfg: RunConfig) -> RunConfig | None:
    """The yardstick SAE's config: A's main size on A's activations from SAE seed
    study.yardstick_seed, in its own folder beside A's SAE; None without the seed."""
    seed = cfg.study.yardstick_seed
    if seed is None:
        return None
    if seed == cfg.sae.seed:
        raise ConfigError(f"study.yardstick_seed {seed} is sae.seed: the yardstick needs another seed")
    folder = cfg.root / f"{cfg.sae_dir.name}_seed{seed}"
    return replace(
        cfg,
        sae=replace(cfg.sae, seed=seed),
        sae_path=str(folder),
        run_name=f"{cfg.slug}-seed{seed}",
        study=StudyConfig(),
    )


def model_name(cfg: RunConfig) -> str:
    return Path(cfg.out_dir).name  # as trainer.analysis.analyze names a run's model by default


def share_corpus(cfg: RunConfig, cfg_b: RunConfig) -> None:
    """Model B reads A's corpus, tokenizer and tokens (symbolic links, nothing copied)."""
    cfg_b.root.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        target, link = (cfg.root / name).resolve(), cfg_b.root / name
        if not target.exists():
            raise FileNotFoundError(f"model B needs model A's {name} at {target}: run `corpus` first")
        if link.is_symlink() or link.exists():
            if link.resolve() == target:
                continue
            raise FileExistsError(f"{link} exists and is not model A's {name}: remove it")
        os.symlink(target, link, target_is_directory=target.is_dir())


def match_pairs(cfg: RunConfig) -> list[tuple[str, str]]:
    """The run pairs the study compares: all pairs of sizes; A and B (features, and neurons)."""
    slugs = [c.slug for c in size_configs(cfg)]
    pairs = list(itertools.combinations(slugs, 2))
    cfg_y = yardstick_config(cfg)
    if cfg_y is not None:
        pairs.append((cfg.slug, cfg_y.slug))
    cfg_b = model_b_config(cfg)
    if cfg_b is not None:
        pairs.append((cfg.slug, cfg_b.slug))
        pairs.append((f"{model_name(cfg)}-neurons", f"{model_name(cfg_b)}-neurons"))
    return pairs


@pipeline.timed("match")
def run_match(cfg: RunConfig) -> Any:
    """Match the study's runs in the database (nothing to do for a single run)."""
    from trainer.analysis.match_runs import match_runs
    from trainer.analysis.size_map import map_sizes
    from trainer.store.database import open_database

    pairs = match_pairs(cfg)
    if not pairs:
        return []
    engine = open_database(cfg.database_url)
    try:
        links = match_runs(
            engine,
            pairs,
            n_tokens=cfg.study.match_tokens or cfg.analysis.n_tokens,
            k=cfg.study.n_matches,
            tokens_per_batch=cfg.analysis.tokens_per_batch,
            dtype="fp32",  # matching in fp32 whatever the analysis used (issue 21)
        )
        size_map = map_sizes(engine, cfg.slug, cfg.analysis.seed) if len(size_configs(cfg)) > 1 else None
    finally:
        engine.dispose()
    for link in links[::2]:
        median = "n/a" if link.median is None else f"{link.median:.2f}"
        print(f"match: {link.run_slug} ~ {link.other_slug} ({link.relation}): median best match r {median}")
    if size_map is not None:
        print(f"match: one map of {size_map.n_points} features over sizes {', '.join(size_map.slugs)}")
    return links


def run_stage(cfg: RunConfig, stage: str, resume: bool = False, activations_file: str | None = None) -> None:
    """Run one stage for every model and dictionary the study holds."""
    sizes, cfg_b, cfg_y = size_configs(cfg), model_b_config(cfg), yardstick_config(cfg)
    if cfg_b is not None and activations_file:
        raise ConfigError("--activations trains on a file; model B (study.seed_b) needs its own harvest")
    if stage == "corpus":
        pipeline.run_corpus(cfg)
    elif stage in ("train-lm", "harvest"):
        run = pipeline.run_train_lm if stage == "train-lm" else pipeline.run_harvest
        for c in [cfg] if cfg_b is None else [cfg, cfg_b]:
            if c is cfg_b:
                share_corpus(cfg, cfg_b)
            run(c, resume=resume)
    elif stage == "train-sae":
        # The yardstick first in every stage, so that the run folder's config.json (written by
        # each) ends as the sizes' and the pages' "newest SAE of the model" is one of the sizes.
        for c in ([cfg_y] if cfg_y else []) + sizes:
            pipeline.run_train_sae(c, resume=resume, activations_file=activations_file)
        if cfg_b is not None:
            pipeline.run_train_sae(cfg_b, resume=resume)
    elif stage == "evaluate":
        for c in ([cfg_y] if cfg_y else []) + sizes + ([cfg_b] if cfg_b else []):
            pipeline.run_evaluate(c)
    elif stage == "analyze":
        if cfg_y is not None:
            pipeline.run_analyze(cfg_y, neurons=False)
        for i, c in enumerate(sizes):
            pipeline.run_analyze(c, neurons=i == 0)
        if cfg_b is not None:
            pipeline.run_analyze(cfg_b)
        run_match(cfg)
    elif stage == "prerender":
        pipeline.run_prerender(cfg)
    else:
        raise ConfigError(f"unknown stage {stage!r}")
