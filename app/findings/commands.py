"""The exact `monosemantic` command lines that compute what a run lacks, from the config the run
was made with (Run.config): the same preset, folder and database, so the numbers land in this
database under this run's name."""

from __future__ import annotations

import json
import shlex
from typing import Any

from trainer.config import ConfigError, preset_config, to_dict
from trainer.store.schema import Run

# Set by flags of their own (or not part of a stage's config).
OWN_FLAGS = {"preset", "out_dir", "db_url", "run_name", "device", "sae_path", "model_path", "hook", "study"}

MATCH_TOKENS_NOTE = "(add `--tokens N` to correlate over fewer held-out tokens)"


def _config(run: Run) -> dict[str, Any]:
    return run.config if isinstance(run.config, dict) else {}


def database_flag(run: Run) -> str:
    """`--db ...` as the run was written: its URL, or $DATABASE_URL where it holds a password
    (never shown), or the SQLite file under its folder."""
    config = _config(run)
    url = config.get("db_url")
    if isinstance(url, str) and url:
        return '--db "$DATABASE_URL"' if "@" in url else f"--db {shlex.quote(url)}"
    out_dir = config.get("out_dir")
    if isinstance(out_dir, str) and out_dir:
        return f"--db {shlex.quote(out_dir.rstrip('/') + '/monosemantic.db')}"
    return '--db "$DATABASE_URL"'


def overrides(run: Run) -> list[str]:
    """`--set stage.field=value` for every field where the run's config differs from its preset's."""
    config = _config(run)
    try:
        preset = json.loads(json.dumps(to_dict(preset_config(str(config.get("preset", "demo"))))))
    except ConfigError:
        return []
    flags = []
    for stage, values in config.items():
        if stage in OWN_FLAGS or not isinstance(values, dict):
            continue
        for name, value in values.items():
            if preset.get(stage, {}).get(name, value) != value:
                flags.append(f"--set {shlex.quote(f'{stage}.{name}={value!r}')}")
    return flags


def stage_flags(run: Run, sizes: tuple[int, ...] | None = None, seed_b: int | None = None) -> str:
    """The flags a stage command needs to act on `run`'s model again: preset, folder, database,
    run name, and the study's sizes and model B (its own, unless given)."""
    config = _config(run)
    study: dict[str, Any] = config["study"] if isinstance(config.get("study"), dict) else {}
    preset = str(config.get("preset") or "demo")
    flags = [f"--preset {shlex.quote(preset)}"]
    out_dir = config.get("out_dir")
    if isinstance(out_dir, str) and out_dir and out_dir != f"runs/{preset}":
        flags.append(f"--out-dir {shlex.quote(out_dir)}")
    flags.append(database_flag(run))
    run_name = config.get("run_name")
    if isinstance(run_name, str) and run_name:
        flags.append(f"--run-name {shlex.quote(run_name)}")
    flags += overrides(run)
    sizes = sizes or tuple(int(s) for s in study.get("sizes") or ())
    if sizes:
        flags.append(f"--d-sae {','.join(str(s) for s in sizes)}")
    seed_b = seed_b if seed_b is not None else study.get("seed_b")
    if seed_b is not None:
        flags.append(f"--seed-b {int(seed_b)}")
    return " ".join(flags)


def analyze(run: Run) -> str:
    return f"monosemantic analyze {stage_flags(run)}"


def match(run: Run, other: Run) -> str:
    return f"monosemantic match {database_flag(run)} --run {shlex.quote(run.slug)} --run {shlex.quote(other.slug)}"


def stages(
    run: Run, names: list[str], sizes: tuple[int, ...] | None = None, seed_b: int | None = None
) -> str:
    """The stages, in order, each resuming from what is already done (finished checkpoints and
    harvested shards are kept)."""
    flags = stage_flags(run, sizes, seed_b)
    return "; ".join(f"monosemantic {name} {flags} --resume" for name in names)
