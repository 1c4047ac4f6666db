"""The `monosemantic` command line: one subcommand per stage, `demo` for all of them, `serve`.

Flags map onto the typed configs in one place (`config_from_args`); `--set stage.field=value`
reaches any config field that has no flag of its own.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path
from typing import Any

from trainer.config import PRESETS, SAE_VARIANTS, ConfigError, RunConfig, preset_config

# Flag -> (config key, type, help). Each flag is offered by the subcommands that use its stage.
STAGE_FLAGS: dict[str, list[tuple[str, str, type, str]]] = {
    "corpus": [
        (
            "--source",
            "corpus.sources",
            str,
            "a text file, directory or .jsonl file (repeatable); default: the built-in offline corpus",
        ),
        ("--text-field", "corpus.text_field", str, "field holding the text in .jsonl sources"),
        ("--max-bytes", "corpus.max_bytes", int, "cap on the corpus size in UTF-8 bytes"),
        ("--vocab-size", "tokenizer.vocab_size", int, "BPE vocabulary size"),
        ("--tokenizer", "tokenizer.tokenizer_path", str, "use this tokenizer.json instead of training one"),
    ],
    "train-lm": [
        ("--lm-steps", "lm.n_steps", int, "optimizer steps"),
        ("--lm-batch-size", "lm.batch_size", int, "contexts per step"),
        ("--lm-lr", "lm.lr", float, "peak learning rate"),
        ("--activation", "model.activation", str, "MLP nonlinearity: relu (the paper's) or gelu"),
        ("--n-ctx", "model.n_ctx", int, "context length"),
    ],
    "harvest": [
        ("--harvest-tokens", "harvest.n_tokens", int, "how many activation rows to harvest"),
    ],
    "train-sae": [
        ("--variant", "sae.variant", str, f"SAE variant: {', '.join(SAE_VARIANTS)}"),
        (
            "--d-sae",
            "sae.d_sae",
            str,
            "number of SAE features; a comma list (512,1024,...) trains one per size",
        ),
        ("--l1-coefficient", "sae.l1_coefficient", float, "sparsity penalty (paper, l1_decnorm, jumprelu)"),
        ("--k", "sae.k", int, "active latents per token (topk, batchtopk, matryoshka_batchtopk)"),
        (
            "--target-l0",
            "sae.target_l0",
            float,
            "adapt λ during training so that L0 lands here (paper, l1_decnorm, jumprelu)",
        ),
        ("--sae-tokens", "sae.n_tokens", int, "training tokens"),
        ("--sae-lr", "sae.lr", float, "Adam learning rate"),
        (
            "--activations",
            "activations_file",
            str,
            "train on this .npy/.safetensors [N, d_in] file instead of the harvested activations",
        ),
    ],
    "evaluate": [("--eval-tokens", "eval.n_tokens", int, "held-out tokens to evaluate on")],
    # The study (monosemantic/study.py): sizes and model B, offered by every stage's command.
    "study": [
        (
            "--d-sae",
            "sae.d_sae",
            str,
            "number of SAE features; a comma list (512,1024,...) trains one per size",
        ),
        ("--seed-b", "study.seed_b", int, "also train model B from this seed, for universality"),
        (
            "--yardstick-seed",
            "study.yardstick_seed",
            int,
            "also train a second SAE of the main size on model A from this seed (the yardstick)",
        ),
    ],
    "analyze": [
        ("--analysis-tokens", "analysis.n_tokens", int, "held-out tokens to analyse"),
        (
            "--llm-url",
            "analysis.llm_url",
            str,
            "an OpenAI-compatible endpoint (e.g. http://localhost:8080/v1) that writes explanations too",
        ),
        ("--llm-model", "analysis.llm_model", str, "the model the --llm-url endpoint should use"),
        ("--llm-max-units", "analysis.llm_max_units", int, "units per run the LLM explains (0: all)"),
        ("--llm-key", "llm_key", str, "API key for --llm-url (else $MONOSEMANTIC_LLM_KEY; never stored)"),
    ],
    "prerender": [],
}

SUBCOMMANDS: dict[str, tuple[str, list[str]]] = {
    "corpus": ("Build the corpus, train the BPE tokenizer and tokenise.", ["corpus"]),
    "train-lm": ("Train the one-layer transformer.", ["train-lm"]),
    "harvest": ("Harvest the model's MLP activations to disk.", ["harvest"]),
    "train-sae": ("Train a sparse autoencoder on the activations.", ["train-sae"]),
    "evaluate": (
        "Evaluate the SAE on held-out text (MSE, FVU, L0, dead/dense, CE loss recovered).",
        ["evaluate"],
    ),
    "analyze": (
        "Analyse every feature and every neuron into the database, then the paper's case studies.",
        ["analyze"],
    ),
    "demo": (
        "Run every stage in order, then serve the browser.",
        ["corpus", "train-lm", "harvest", "train-sae", "evaluate", "analyze", "prerender"],
    ),
}


# Subcommands that can study a transformers model at a hook point instead of our own model.
MODEL_COMMANDS = ("corpus", "harvest", "train-sae", "evaluate", "analyze", "demo")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("your own model")
    group.add_argument(
        "--model",
        dest="model_path",
        metavar="PATH_OR_ID",
        help="a transformers causal LM (GPT-2, GPT-NeoX, Llama families): its folder, or a hub id "
        "where there is network; used with its own tokenizer instead of our one-layer model",
    )
    group.add_argument(
        "--hook",
        metavar="NAME",
        help="the hook point to read, TransformerLens-style: blocks.{i}.mlp.hook_post, "
        "blocks.{i}.hook_resid_pre / hook_resid_post, blocks.{i}.attn.hook_z",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(
        "--preset", default="demo", help=f"named configuration: {', '.join(PRESETS)} (default: demo)"
    )
    group.add_argument("--out-dir", help="where artifacts go (default: runs/<preset>)")
    group.add_argument("--db", help="database URL (default: $DATABASE_URL, else SQLite under --out-dir)")
    group.add_argument("--run-name", help="the run's slug in the database")
    group.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.FIELD=VALUE",
        help="override any config field, e.g. --set sae.lr=3e-4 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monosemantic", description=__doc__.splitlines()[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, stages) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_common(sub)
        if name in MODEL_COMMANDS:
            _add_model_flags(sub)
        offered: set[str] = set()
        for stage in [*stages, "study"]:  # every stage takes the study's flags: one command line for all
            group = sub.add_argument_group(stage)
            for flag, key, kind, flag_help in STAGE_FLAGS[stage]:
                if flag in offered:
                    continue
                offered.add(flag)
                action = "append" if key == "corpus.sources" else "store"
                group.add_argument(flag, dest=key, type=kind, action=action, help=flag_help)
        if name in ("evaluate", "analyze"):
            sub.add_argument(
                "--sae",
                dest="sae_path",
                metavar="PATH",
                help="the SAE folder to use (cfg.json + sae_weights.safetensors: ours or SAELens's) "
                "instead of the one this run trained",
            )
        if name == "demo":
            sub.add_argument("--no-serve", action="store_true", help="stop after analysis instead of serving")
            sub.add_argument("--host", default="127.0.0.1")
            sub.add_argument("--port", type=int, default=8000)
    prerender = commands.add_parser(
        "prerender",
        help="Render every page of complete runs into the database, to serve them fast.",
        description="Render every page of complete runs into the database (skipping pages this "
        "version of the app has stored already), so the browser serves them without rendering.",
    )
    prerender.add_argument(
        "--db", help="database URL (default: $DATABASE_URL, else runs/demo/monosemantic.db)"
    )
    prerender.add_argument(
        "--run", action="append", dest="runs", metavar="SLUG", help="only this run (repeatable)"
    )
    prerender.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="rendering processes (default: CPUs)"
    )
    prerender.add_argument("--force", action="store_true", help="render stored pages again too")
    export = commands.add_parser(
        "export",
        help="Write a complete run's features to files (Neuronpedia's layout, or one JSONL file).",
        description="Write run RUN's features, examples, labels, logit effects, densities and "
        "histograms: --format jsonl writes one file `monosemantic import` reads back "
        "(docs/export_format.md); --format neuronpedia writes Neuronpedia's export folders.",
    )
    export.add_argument("run", metavar="RUN", help="the run's slug")
    export.add_argument("--format", choices=("jsonl", "neuronpedia"), default="jsonl")
    export.add_argument("--out", required=True, help="the .jsonl(.gz) file, or the neuronpedia folder")
    export.add_argument("--db", help="database URL or SQLite file (default: $DATABASE_URL, else the demo's)")
    import_ = commands.add_parser(
        "import",
        help="Read a run exported with --format jsonl into a database.",
        description="Read a run file written by `monosemantic export --format jsonl` into a database "
        "(created if needed), in one transaction: a bad file changes nothing.",
    )
    import_.add_argument("file", metavar="FILE", help="the .jsonl or .jsonl.gz file")
    import_.add_argument("--db", required=True, help="database URL or SQLite file to import into")
    import_.add_argument("--run-name", help="the run's slug in the database (default: the file's)")
    match = commands.add_parser(
        "match",
        help="Match the features of two analysed runs by activation correlation (splitting, universality).",
        description="Match every feature of run A to its closest features in run B and back, by the "
        "correlation of their activations on the same held-out tokens, and store the links (runs of "
        "one model: dictionary sizes; of two models: universality).",
    )
    match.add_argument("--db", help="database URL (default: $DATABASE_URL, else runs/demo/monosemantic.db)")
    match.add_argument(
        "--run", action="append", dest="runs", metavar="SLUG", required=True, help="twice: A, then B"
    )
    match.add_argument("--tokens", type=int, help="held-out tokens to correlate over (default: as analysed)")
    cases = commands.add_parser(
        "case-studies",
        help="The paper's case studies on an analysed SAE run: concept proxies vs its best feature and neuron.",
        description="For each concept proxy (built in: Arabic, Hebrew, base64, hex digests, Cyrillic, "
        "Devanagari, URLs; or your own), find the run's feature and its model's neuron that best track "
        "it on held-out text, measure their specificity and sensitivity, pin each while the model "
        "writes, and store the results beside the run (replacing earlier case studies of the same "
        "names; nothing else of the run changes).",
    )
    cases.add_argument("--db", help="database URL (default: $DATABASE_URL, else runs/demo/monosemantic.db)")
    cases.add_argument("--run", required=True, metavar="SLUG", help="the SAE run")
    cases.add_argument(
        "--proxy",
        action="append",
        default=[],
        metavar="NAME=REGEX|MODULE:FUNCTION",
        help="a proxy of your own (repeatable): a regex whose matches mark the concept, or a function "
        "f(token_text, context) -> score in [0, 1]; a built-in of the same name is replaced",
    )
    cases.add_argument("--no-builtin", action="store_true", help="only the --proxy ones")
    cases.add_argument("--tokens", type=int, help="held-out tokens to measure on (default: as analysed)")
    serve = commands.add_parser(
        "serve", help="Serve the feature browser.", description="Serve the feature browser."
    )
    serve.add_argument("--db", help="database URL (default: $DATABASE_URL, else runs/demo/monosemantic.db)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers", type=int, help="server processes (default: $MONOSEMANTIC_WORKERS, else min(2, CPUs))"
    )
    return parser


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"--d-sae {text!r}: expected a number of features or a comma list of them"
        ) from None
    if not sizes:
        raise ConfigError("--d-sae: expected a number of features")
    return sizes


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides: dict[str, Any] = {}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(
                f"--set {item!r}: expected STAGE.FIELD=VALUE (or FIELD=VALUE for device, run_name)"
            )
        key, value = item.split("=", 1)
        overrides[key] = _parse_value(value)
    for key, value in vars(args).items():
        if "." in key and value is not None:
            overrides[key] = tuple(value) if isinstance(value, list) else value
    if isinstance(overrides.get("sae.d_sae"), str):  # --d-sae 512,1024: the first is the main size
        sizes = _sizes(overrides["sae.d_sae"])
        overrides["sae.d_sae"] = sizes[0]
        if len(sizes) > 1:
            overrides["study.sizes"] = sizes
    if args.out_dir:
        overrides["out_dir"] = args.out_dir
    # A flag that was given wins over `--set` of the same field; one that was not given leaves
    # `--set run_name=...` (or db_url, sae_path, model_path, hook) as it was.
    for key, value in (
        ("db_url", args.db),
        ("run_name", args.run_name),
        ("sae_path", getattr(args, "sae_path", None)),
        ("model_path", getattr(args, "model_path", None)),
        ("hook", getattr(args, "hook", None)),
    ):
        if value is not None:
            overrides[key] = value
    return preset_config(args.preset, **overrides)


def _existing_database(db_url: str | None) -> str:
    """The database URL (--db, else $DATABASE_URL, else the demo's), checked to exist."""
    from app.settings import Settings

    if db_url and "://" not in db_url:  # a file path: the SQLite database there
        db_url = f"sqlite:///{Path(db_url).resolve()}"
    url = (Settings(database_url=db_url) if db_url else Settings()).database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise FileNotFoundError(
            f"no database at {url.removeprefix('sqlite:///')}: run `monosemantic demo` "
            "first, or point --db / DATABASE_URL at one"
        )
    return url


def _prerender(db_url: str | None, runs: list[str] | None, processes: int, force: bool) -> None:
    from app.pages.prerender import prerender

    url = _existing_database(db_url)
    result = prerender(url, runs, processes=processes, force=force)
    print(result.summary())


def _exchange(args: argparse.Namespace) -> int:
    """`export` and `import`: a run to files and back (trainer.store.runfile, trainer.store.neuronpedia)."""
    from trainer.store.neuronpedia import export_neuronpedia
    from trainer.store.runfile import export_jsonl, import_jsonl
    from trainer.store.schema import check_schema_version, make_engine

    if args.command == "import":
        url = args.db if "://" in args.db else f"sqlite:///{Path(args.db).resolve()}"
        slug, counts = import_jsonl(Path(args.file), url, args.run_name)
        links = f", {counts['run_link']} links" if counts["run_link"] else ""
        print(
            f"imported run {slug!r} ({counts['feature']} features, {counts['example']} examples{links}) "
            f"into {url}"
        )
        return 0
    engine = make_engine(_existing_database(args.db), read_only=True)
    check_schema_version(engine)
    try:
        if args.format == "jsonl":
            counts = export_jsonl(engine, args.run, Path(args.out))
            print(f"wrote run {args.run!r} ({counts['feature']} features) to {args.out}")
        else:
            folder = export_neuronpedia(engine, args.run, Path(args.out))
            print(f"wrote run {args.run!r} in Neuronpedia's layout to {folder}")
    finally:
        engine.dispose()
    return 0


def _match(db_url: str | None, runs: list[str], n_tokens: int | None) -> None:
    from trainer.analysis.match_runs import match_runs
    from trainer.analysis.size_map import map_sizes
    from trainer.store.database import open_database

    if len(runs) != 2:
        raise ConfigError(f"match takes two runs (--run A --run B), not {len(runs)}")
    engine = open_database(_existing_database(db_url))
    try:
        links = match_runs(engine, [(runs[0], runs[1])], n_tokens=n_tokens)
        for link in links:
            median = "n/a" if link.median is None else f"{link.median:.3f}"
            print(f"{link.run_slug} -> {link.other_slug} ({link.relation}): median best-match r {median}")
        if links[0].relation == "sizes" and (size_map := map_sizes(engine, runs[0])) is not None:
            print(f"one map of {size_map.n_points} features over sizes {', '.join(size_map.slugs)}")
    finally:
        engine.dispose()


def _case_studies(args: argparse.Namespace) -> None:
    from trainer.analysis.case_study_runs import run_case_studies
    from trainer.config import CaseStudyConfig
    from trainer.store.database import open_database

    cfg = CaseStudyConfig(n_tokens=args.tokens, proxies=tuple(args.proxy), builtin=not args.no_builtin)
    engine = open_database(_existing_database(args.db))
    try:
        report = run_case_studies(engine, args.run, cfg)
    finally:
        engine.dispose()
    print(f"case studies of {report.slug} over {report.n_tokens:,} held-out tokens:")
    for line in report.lines():
        print(f"  {line}")


def _serve(db_url: str | None, host: str, port: int, workers: int | None = None) -> int:
    """Serve the app; with several workers (default MONOSEMANTIC_WORKERS, else min(2, CPUs)) each
    process builds its own app from the environment, so the database URL travels in DATABASE_URL."""
    from app.pages.prerender import runs_without_pages
    from app.server import serve
    from app.settings import Settings
    from trainer.store.schema import check_schema_version, make_engine

    url = _existing_database(db_url)
    settings = Settings(database_url=url)
    engine = make_engine(url, read_only=True)
    check_schema_version(engine)  # a clear error now, not a traceback in every worker
    unstored = runs_without_pages(engine)
    engine.dispose()
    if unstored:
        print(
            f"note: {', '.join(unstored)}: no pages stored by this version of the app, so they are "
            "rendered on each first visit; `monosemantic prerender` stores them",
            flush=True,
        )
    workers = workers or settings.workers
    os.environ["DATABASE_URL"] = url
    print(
        f"serving the feature browser at http://{host}:{port}/  ({workers} worker(s); Ctrl-C to stop)",
        flush=True,
    )
    return serve(host, port, workers)


def run_stages(cfg: RunConfig, stages: list[str], resume: bool, activations_file: str | None = None) -> None:
    from monosemantic.study import run_stage  # each stage, for every size and model of the study

    for stage in stages:
        run_stage(cfg, stage, resume, activations_file)


def check_model(cfg: RunConfig, need_hook: bool = True) -> None:
    """Refuse a model folder, hook name or tokenizer that cannot work, in one line."""
    if cfg.model_path:
        from trainer.lm.hf_model import preflight

        preflight(cfg.model_path, cfg.hook, need_hook)
        if need_hook and (cfg.tokens_dir / "meta.json").exists():
            from monosemantic.pipeline import token_meta

            token_meta(cfg)  # tokenised for this model
    else:
        from trainer.lm.hooks import check_own_hook

        check_own_hook(cfg.hook)


KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    ValueError,
    FileNotFoundError,
    RuntimeError,
    OSError,
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args.db, args.host, args.port, args.workers)
        if args.command == "prerender":
            _prerender(args.db, args.runs, args.processes, args.force)
            return 0
        if args.command in ("export", "import"):
            return _exchange(args)
        if args.command == "match":
            _match(args.db, args.runs, args.tokens)
            return 0
        if args.command == "case-studies":
            _case_studies(args)
            return 0
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.command != "train-sae":
            raise ConfigError(f"only train-sae runs data-parallel under torchrun, not {args.command}")
        cfg = config_from_args(args)
        if getattr(args, "llm_key", None):  # for this process only: the key is never in the config
            os.environ["MONOSEMANTIC_LLM_KEY"] = args.llm_key
        if cfg.sae_path:
            from monosemantic.pipeline import check_sae_path

            check_sae_path(cfg)  # before any stage writes a file
        stages = SUBCOMMANDS[args.command][1]
        if cfg.model_path or cfg.hook:
            check_model(cfg, need_hook=args.command != "corpus")  # before anything is written
            stages = [stage for stage in stages if not (cfg.model_path and stage == "train-lm")]
        run_stages(cfg, stages, args.resume, getattr(args, "activations_file", None))
        if args.command == "demo":
            print(f"demo finished; artifacts in {cfg.root}/, database {cfg.database_url}")
            if not args.no_serve:
                return _serve(cfg.database_url, args.host, args.port)
    except KNOWN_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
