"""FVU against L0, ours against SAELens, each tuned as its competent user would: trained on the same
activations with the same token budget, all evaluated by our evaluator on held-out text.

The first --tokens rows of a harvest (manifest.json + acts_*.npy) are written once as one float32
.npy; every SAE trains on exactly those rows (one pass at the default budget). Ours trains
in-process (`train_sae`, the variant's own recipe, only lr and seed set); SAELens trains in its own
venv with its own `SAETrainer` (bench/saelens_train.py), and its saved SAE is read back by our
loader (checked against SAELens's own `SAE.load_from_disk` on 4096 rows). Each SAE is then
evaluated by `trainer.evaluate.evaluate_sae` on --lm's held-out tokens: FVU, L0, dead fraction, CE
loss recovered.

Fair by construction (issue 22): every cell (system, variant, setting) is trained at each lr of
--lrs with the first of --seeds, and the lr with the lowest FVU is then trained with every seed.
SAELens gets what our recipe gets wherever it has the knob: its dead-latent window scaled to the
run (our dead_window_fraction of the steps, not its 1,000-step default that a 256-step run never
reaches), TopK / BatchTopK decoders at unit norm (its default 0.1 kills latents), the L1 / L0
coefficient warmed up over our l1_warmup_fraction, and our lr schedule (warm-up over 5%, decay to
0 over the last 20%). saelens_train.py records every setting that differs from SAELens's defaults,
and the report lists them.

Speed: training only (activation file to saved SAE), CPU seconds of the training process at
--threads torch threads (default 1, so it holds on a shared machine), and wall time.

Every training is cached as JSON in --work-dir under a hash of its settings, which include the
code it ran (the git tree of trainer/ and the blob of bench/saelens_train.py, or a digest of their
uncommitted changes), SAELens's version and the evaluation protocol. The report takes only rows of
the current code and protocol, and lists the cached rows it left out. Several bench processes may
share a --work-dir: each run is claimed by one. A variant that is not installed (ours: not in
trainer.config.SAE_VARIANTS; SAELens: no such module in its venv) is reported and the rest run.
The report is docs/pareto.json, rendered by bench/pareto_report.py into
docs/pareto.md, the README's section and docs/pareto.png.

    .venv/bin/python bench/bench_pareto.py --activations runs/demo/activations --lm runs/demo \
        [--only 'saelens-topk-k=16,ours-topk-k=*'] [--lrs 1e-3,3e-3] [--seeds 0,1,2] [--threads 1]
        [--list] [--report-only]
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pareto_report
import torch
from saelens_venv import DEFAULT_VENV, ensure_venv, saelens_version

from trainer.config import SAE_VARIANTS, EvalConfig, SAEConfig, load_config
from trainer.corpus.tokenizer import load_token_split
from trainer.evaluate import evaluate_sae
from trainer.lm.model import OneLayerTransformer
from trainer.provenance import ModelIdentity, ModelMismatch, check_same_model
from trainer.sae import SparseAutoencoder, train_sae

REPO = Path(__file__).resolve().parent.parent
SAELENS_TRAIN = Path(__file__).with_name("saelens_train.py")
CHECK_FILE = "check_reconstruction.npy"  # written by saelens_train.py
TARGET_L0S = (8, 16, 32)
KS = (8, 16, 32)
# Standard (L1) SAELens SAEs: l1_coefficient values (inputs normalised to mean norm sqrt(d_in), the
# penalty weighted by decoder norms). At lr 1e-3 with a 5% warm-up, 20 gave held-out L0 13.6 and 10
# gave 27.8 on the demo run's activations.
SAELENS_L1 = (5.0, 10.0, 20.0)
# SAELens JumpReLU: its "quadratic" L0 loss (GemmaScope 2) aims at a target L0, as our --target-l0 does.
SAELENS_JUMPRELU_L0S = TARGET_L0S
LRS = (1e-3, 3e-3)
SEEDS = (0, 1, 2)
# How held-out metrics are measured. 1: the first --eval tokens of the validation split; 2: windows
# spread over the whole split (trainer.evaluate.context_windows). Part of every row's cache key.
EVAL_PROTOCOL = 2
# A row has two keys. Its training key (the result file's name) is its settings and the code that
# trained it: ours, the whole trainer; SAELens's rows, saelens_train.py (SAELens's own version is in
# the settings). Its evaluation key is EVAL_PROTOCOL and the code of our evaluator and loader: when
# that changes, a cached row is evaluated again from its saved SAE (seconds) instead of trained
# again (a SAELens row is ~7 CPU minutes), so a refactor of the evaluator keeps every training.
EVAL_CODE = (
    "trainer/evaluate.py",
    "trainer/lm/hooks.py",
    "trainer/lm/model.py",
    "trainer/sae/autoencoder.py",
    "trainer/sae/saelens_format.py",
)
CODE_PATHS = {"ours": ("trainer",), "saelens": ("bench/saelens_train.py",)}


def eval_key() -> str:
    return f"protocol {EVAL_PROTOCOL} {code_version(EVAL_CODE)}"


SAELENS_ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")


# ---------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Cell:
    """One point of the plot: a system's variant at one sparsity setting (trained at several lrs
    and seeds)."""

    system: str  # "ours" or "saelens"
    variant: str  # ours: SAEConfig.variant; SAELens: its architecture
    setting: str  # what varies along the variant's line, as shown in the table
    params: tuple[tuple[str, Any], ...]  # those settings as keyword arguments
    # Ours only (--ours-set): SAEConfig fields changed from the recipe, to test what a gap is
    # made of; such a cell is its own line in the report ("topk [revive_rows=0]").
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """The variant as the report shows it."""
        changed = ",".join(f"{k}={v}" for k, v in self.overrides)
        return f"{self.variant} [{changed}]" if changed else self.variant

    @property
    def name(self) -> str:
        return f"{self.system}-{self.label}-{self.setting}".replace(" ", "")


@dataclass(frozen=True)
class Run:
    """One training of a cell."""

    cell: Cell
    lr: float
    seed: int
    threads: int

    @property
    def name(self) -> str:
        threads = f"-threads={self.threads}" if self.threads != 1 else ""
        return f"{self.cell.name}-lr={self.lr:g}-seed={self.seed}{threads}"


def all_cells() -> list[Cell]:
    cells = []
    for variant in ("paper", "l1_decnorm", "jumprelu"):
        cells += [Cell("ours", variant, f"L0={t}", (("target_l0", float(t)),)) for t in TARGET_L0S]
    for variant in ("topk", "batchtopk", "matryoshka_batchtopk"):
        cells += [Cell("ours", variant, f"k={k}", (("k", k),)) for k in KS]
    cells += [Cell("saelens", "standard", f"l1={c:g}", (("l1_coefficient", c),)) for c in SAELENS_L1]
    for variant in ("topk", "batchtopk"):
        cells += [Cell("saelens", variant, f"k={k}", (("k", k),)) for k in KS]
    cells += [
        Cell("saelens", "jumprelu", f"L0={t}", (("target_l0", float(t)),)) for t in SAELENS_JUMPRELU_L0S
    ]
    return cells


def parse_value(text: str) -> Any:
    """A Python literal (0, 1e-3, (), None) or else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def select(cells: list[Cell], only: str | None) -> list[Cell]:
    """The cells whose name matches any of the comma-separated names or glob patterns, in the
    order of the patterns."""
    if not only:
        return cells
    chosen: list[Cell] = []
    for pattern in (f.strip() for f in only.split(",") if f.strip()):
        chosen += [c for c in cells if fnmatch.fnmatchcase(c.name, pattern) and c not in chosen]
    return chosen


def saelens_architectures(python: Path) -> set[str]:
    """The SAELens architectures whose training module imports in its venv."""
    probe = (
        "import importlib, json\n"
        "ok = []\n"
        f"for a in {list(SAELENS_ARCHITECTURES)!r}:\n"
        "    try:\n"
        "        importlib.import_module(f'sae_lens.saes.{a}_sae'); ok.append(a)\n"
        "    except ImportError:\n"
        "        pass\n"
        "print(json.dumps(ok))"
    )
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return set(json.loads(proc.stdout.strip().splitlines()[-1])) if proc.returncode == 0 else set()


# ---------------------------------------------------------------------------- code identity


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def code_version(paths: tuple[str, ...]) -> str:
    """The committed git object of each path, or, where it has uncommitted changes, "dirty-" and a
    digest of them: equal strings mean the same code."""
    parts = []
    for path in paths:
        if git("status", "--porcelain", "--", path):
            changes = git("diff", "HEAD", "--", path) + git(
                "ls-files", "--others", "--exclude-standard", path
            )
            parts.append(f"{path}:dirty-{hashlib.sha1(changes.encode()).hexdigest()[:10]}")
        elif not (REPO / path).exists():
            parts.append(f"{path}:absent")
        else:
            parts.append(f"{path}:{git('rev-parse', f'HEAD:{path}')[:10]}")
    return " ".join(parts)


# ---------------------------------------------------------------------------- training rows


def digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def check_lm(harvest: Path, run: Path) -> None:
    """Refuse an --lm other than the model the harvest records (trainer/provenance.py): rows of
    one run evaluated with another run's model gave FVU 0.95 without a word."""
    manifest = json.loads((harvest / "manifest.json").read_text())
    remedy = "pass --lm the run they were harvested in, or harvest again with this model"
    try:
        check_same_model(
            manifest,
            ModelIdentity.own(run / "lm"),
            f"the activations in {harvest}",
            remedy,
            warn_unrecorded=True,
        )
    except ModelMismatch as exc:
        raise SystemExit(f"error: {exc}") from None


def write_training_rows(harvest: Path, n_rows: int, work_dir: Path) -> tuple[Path, str]:
    """The first n_rows rows of the harvest's shards, in order, as one float32 [n_rows, d_in] .npy
    (written once; its name carries a digest of the manifest, which names the model's weights)."""
    manifest = json.loads((harvest / "manifest.json").read_text())
    source = digest({"manifest": manifest, "rows": n_rows})
    path = work_dir / f"acts-{n_rows}-{source}.npy"
    if path.exists():
        return path, source
    if int(manifest["n_rows"]) < n_rows:
        raise SystemExit(f"{harvest} holds {manifest['n_rows']:,} rows: fewer than --tokens {n_rows:,}")
    work_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    rows = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.float32, shape=(n_rows, int(manifest["d_in"]))
    )
    filled = 0
    for shard in manifest["shards"]:
        acts = np.load(harvest / shard, mmap_mode="r")
        take = min(len(acts), n_rows - filled)
        rows[filled : filled + take] = acts[:take]
        filled += take
        if filled == n_rows:
            break
    rows.flush()
    del rows
    os.replace(partial, path)
    print(f"wrote the first {n_rows:,} harvested rows to {path}")
    return path, source


# ---------------------------------------------------------------------------- training


def ours_config(run: Run, d_in: int, args: argparse.Namespace) -> SAEConfig:
    return SAEConfig(
        d_in=d_in,
        d_sae=args.d_sae,
        variant=run.cell.variant,  # type: ignore[arg-type]
        batch_size=args.batch_size,
        n_tokens=args.tokens,
        lr=run.lr,
        seed=run.seed,
        **dict(run.cell.params),
        **dict(run.cell.overrides),
    )


def saelens_options(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """saelens_train.py's options for `run`: our recipe's schedule wherever SAELens has the knob."""
    ours = SAEConfig()  # our defaults: the recipe SAELens is matched to
    n_steps = args.tokens // args.batch_size
    options: dict[str, Any] = {
        "architecture": run.cell.variant,
        "d-sae": args.d_sae,
        "batch-size": args.batch_size,
        "n-tokens": args.tokens,
        "lr": run.lr,
        "lr-warm-up-steps": round(ours.lr_warmup_fraction * n_steps),
        "lr-decay-steps": round(ours.lr_decay_fraction * n_steps),
        "dead-feature-window": max(1, round(ours.dead_window_fraction * n_steps)),
        "seed": run.seed,
        "threads": run.threads,
        **{k.replace("_", "-"): v for k, v in run.cell.params},
    }
    if run.cell.variant in ("topk", "batchtopk"):
        options["decoder-init-norm"] = 1.0  # ours: the tied unit init (Variant.default_init_norm)
    else:
        options["sparsity-warm-up-steps"] = round(ours.l1_warmup_fraction * n_steps)
    return options


def run_settings(run: Run, d_in: int, source: str, args: argparse.Namespace, version: str | None) -> dict:
    """Everything that determines a run's result: its cache key."""
    common = {
        "system": run.cell.system,
        "variant": run.cell.variant,
        # The rows' digest names the model (its manifest); check_lm holds --lm to that model.
        "activations": source,
        "threads": run.threads,
        "code": code_version(CODE_PATHS[run.cell.system]),
    }
    if run.cell.system == "ours":
        return {**common, "sae": dataclasses.asdict(ours_config(run, d_in, args))}
    return {**common, "sae_lens_version": version, "options": saelens_options(run, args)}


def train_ours(run: Run, acts: Path, d_in: int, out: Path, args: argparse.Namespace) -> dict:
    cfg = ours_config(run, d_in, args)
    started, started_cpu = time.perf_counter(), time.process_time()
    train_sae(cfg, acts, out, progress=False)
    return {
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - started_cpu,
        "n_tokens": cfg.n_steps * cfg.batch_size,
    }


def train_saelens(run: Run, python: Path, acts: Path, out: Path, args: argparse.Namespace) -> dict | None:
    options = saelens_options(run, args)
    command = [str(python), str(SAELENS_TRAIN), f"--acts={acts}", f"--out={out}"]
    command += [f"--{k}={v}" for k, v in options.items()]
    threads = str(run.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = (out / "train.log").read_text()[-1500:]
        print(f"  SAELens training of {run.name} failed (exit {proc.returncode}):\n{tail}")
        return None
    return json.loads((out / "bench.json").read_text())


@torch.no_grad()
def loader_check(sae: SparseAutoencoder, acts: Path, out: Path) -> float:
    """Max |our reconstruction − SAELens's| on the rows saelens_train.py reconstructed."""
    reference = np.load(out / CHECK_FILE)
    rows = torch.from_numpy(np.load(acts, mmap_mode="r")[: len(reference)].astype(np.float32))
    reconstruction, _ = sae(rows)
    return float(np.abs(reconstruction.numpy() - reference).max())


# ---------------------------------------------------------------------------- evaluation


@dataclass
class Evaluator:
    """The LM and held-out tokens of a run, loaded once (as monosemantic.pipeline.run_evaluate does)."""

    model: OneLayerTransformer
    val_tokens: np.ndarray
    eval_cfg: EvalConfig

    @classmethod
    def load(cls, run: Path) -> Evaluator:
        config_path = run / "config.json"
        eval_cfg = load_config(config_path).eval if config_path.exists() else EvalConfig()
        model = OneLayerTransformer.load(run / "lm")
        return cls(model, load_token_split(run / "tokens", "val"), eval_cfg)

    def __call__(self, sae: SparseAutoencoder, out: Path) -> dict:
        if sae.cfg.d_in != self.model.cfg.d_mlp:
            raise SystemExit(
                f"the SAEs read {sae.cfg.d_in}-d rows but the LM's MLP has {self.model.cfg.d_mlp}"
            )
        result = evaluate_sae(
            self.model, sae, self.val_tokens, self.eval_cfg, self.model.cfg.n_ctx, out_dir=out, progress=False
        )
        return {
            k: result.to_dict()[k]
            for k in ("n_tokens", "mse", "fvu", "l0", "dead_fraction", "ce_loss_recovered")
        }


# ---------------------------------------------------------------------------- runs


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


@dataclass
class Bench:
    """What every run shares: the arguments, the training rows, SAELens's venv, the evaluator."""

    args: argparse.Namespace
    acts: Path
    source: str
    d_in: int
    python: Path | None
    version: str | None
    evaluator: Evaluator

    def result_path(self, run: Run) -> tuple[Path, dict]:
        settings = run_settings(run, self.d_in, self.source, self.args, self.version)
        return self.args.work_dir / "results" / f"{run.name}-{digest(settings)}.json", settings

    def train(self, run: Run) -> dict | None:
        """The run's result: from the cache, else trained, evaluated and cached."""
        path, settings = self.result_path(run)
        if path.exists():
            print(f"{run.name}: cached ({path.name})")
            return self.refresh(json.loads(path.read_text()), path)
        if not claim(path.with_suffix(".claim")):
            print(f"{run.name}: being trained by another bench process; left to it")
            return None
        try:
            return self._train(run, path, settings)
        finally:
            path.with_suffix(".claim").unlink(missing_ok=True)

    def evaluate(self, system: str, out: Path) -> dict:
        """Held-out metrics of the SAE saved in `out` (and, for SAELens's, our loader's agreement
        with SAELens's own reconstruction), with the evaluation key they were measured under."""
        sae = SparseAutoencoder.load(out)
        extra = {"loader_max_abs_diff": loader_check(sae, self.acts, out)} if system == "saelens" else {}
        metrics = self.evaluator(sae, out)
        metrics.pop("n_tokens")  # the held-out count; the row's n_tokens is the training budget
        return {**metrics, **extra, "eval_key": eval_key()}

    def refresh(self, row: dict, path: Path) -> dict:
        """A cached row, evaluated again from its saved SAE if it was measured under another
        evaluation key (and written back); as it was if its SAE folder is gone."""
        if row.get("eval_key") == eval_key() or not Path(row.get("sae_dir", "")).is_dir():
            return row
        print(f"{path.stem}: evaluating again (evaluator changed)...", flush=True)
        row = {**row, **self.evaluate(row["system"], Path(row["sae_dir"]))}
        row["evaluated_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        path.write_text(json.dumps(row, indent=2))
        return row

    def _train(self, run: Run, path: Path, settings: dict) -> dict | None:
        out = self.args.work_dir / "saes" / path.stem
        shutil.rmtree(out, ignore_errors=True)
        print(f"{run.name}: training...", flush=True)
        torch.set_num_threads(run.threads)
        if run.cell.system == "ours":
            trained = train_ours(run, self.acts, self.d_in, out, self.args)
        else:
            assert self.python is not None
            found = train_saelens(run, self.python, self.acts, out, self.args)
            if found is None:
                return None
            trained = found
        torch.set_num_threads(self.args.threads)
        metrics = self.evaluate(run.cell.system, out)
        extra: dict[str, Any] = {}
        if run.cell.system == "saelens":
            extra = {"train_l0": trained.get("train_l0"), "saelens_non_default": trained.get("non_default")}
        result = {
            "system": run.cell.system,
            "variant": run.cell.label,
            "setting": run.cell.setting,
            "lr": run.lr,
            "seed": run.seed,
            "threads": run.threads,
            **metrics,
            "wall_seconds": trained["wall_seconds"],
            "cpu_seconds": trained["cpu_seconds"],
            "n_tokens": trained["n_tokens"],
            **extra,
            "commit": git("rev-parse", "--short", "HEAD"),
            "command": shlex.join(["python", "bench/bench_pareto.py", *sys.argv[1:]]),
            "trained_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "sae_dir": str(out),
            "settings": settings,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        check = f", loader |Δ| {metrics['loader_max_abs_diff']:.2g}" if extra else ""
        print(
            f"  L0 {result['l0']:.1f}, FVU {result['fvu']:.4f}, dead {100 * result['dead_fraction']:.1f}%, "
            f"CE rec {100 * result['ce_loss_recovered']:.1f}%, {result['wall_seconds']:.0f} s "
            f"({result['cpu_seconds']:.0f} CPU s){check}",
            flush=True,
        )
        return result

    def sweep(self, cell: Cell, lrs: tuple[float, ...], seeds: tuple[int, ...], threads: int) -> None:
        """Each lr at the first seed, then the best lr (lowest FVU) at every seed (and at `threads`
        threads). With one lr and its run left to another process, that lr is the best."""
        first = [self.train(Run(cell, lr, seeds[0], 1)) for lr in lrs]
        done = [r for r in first if r is not None]
        if not done and len(lrs) > 1:
            return
        best = min(done, key=lambda r: r["fvu"])["lr"] if done else lrs[0]
        for seed in seeds[1:]:
            self.train(Run(cell, best, seed, 1))
        if threads != 1:
            self.train(Run(cell, best, seeds[0], threads))


def claim(path: Path) -> bool:
    """Claim a run for this process (several bench processes may share a --work-dir): False while
    a live process holds the claim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            path.unlink(missing_ok=True)  # its process is gone
            return claim(path)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def why_left_out(row: dict, bench: Bench) -> str | None:
    """Why a cached row may not enter this report, or None. Its training is checked first; only a
    row whose training is current is evaluated again (Bench.refresh) when the evaluator changed."""
    settings = row.get("settings", {})
    code = code_version(CODE_PATHS.get(row.get("system", ""), ("trainer",)))
    if settings.get("code") != code:
        return f"code {settings.get('code', 'unrecorded (before issue 22)')}, not {code}"
    if settings.get("activations") != bench.source:
        return "other training rows"
    if row["system"] == "saelens" and settings.get("sae_lens_version") != bench.version:
        return f"SAELens {settings.get('sae_lens_version')}, not {bench.version}"
    if row.get("eval_key") != eval_key():
        return f"evaluated under {row.get('eval_key', 'an unrecorded evaluator')}, and its SAE is gone"
    return None


def build_report(bench: Bench, cells: list[Cell], missing: list[str]) -> dict:
    """Every cached row of the current code and protocol on these rows: docs/pareto.json."""
    rows, skipped = [], []
    known = {c.name for c in cells}
    for path in sorted((bench.args.work_dir / "results").glob("*.json")):
        row = json.loads(path.read_text())
        why = why_left_out(row, bench) if "settings" in row else "written before issue 22"
        if why is not None and why.startswith("evaluated under") and "lr" in row:
            row = bench.refresh(row, path)
            why = why_left_out(row, bench)
        base_variant = row.get("variant", "").split(" [")[0]
        if why is None and f"{row['system']}-{base_variant}-{row['setting']}" not in known:
            why = "a cell this bench no longer has"
        if why is None and "lr" not in row:
            why = "written before issue 22"
        if why:
            skipped.append(f"{path.name}: {why}")
        else:
            rows.append({k: v for k, v in row.items() if k not in ("settings", "sae_dir")})
    have = {(r["system"], r["variant"], r["setting"]) for r in rows}
    not_run = [
        f"{c.name}: no training at this code" for c in cells if (c.system, c.variant, c.setting) not in have
    ]
    # Per SAELens architecture: each changed setting with its value, or "per row" where the rows
    # differ in it (lr: the sweep; k, l1_coefficient, target_l0: the setting column).
    values: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for row in rows:
        for key, value in (row.get("saelens_non_default") or {}).items():
            values[row["variant"]][key].add(json.dumps(value))
    non_default = {
        architecture: {k: json.loads(next(iter(v))) if len(v) == 1 else "per row" for k, v in changed.items()}
        for architecture, changed in values.items()
    }
    args = bench.args
    # What the bench passes to saelens_train.py per architecture, beyond the lr, the seed and the
    # setting column (saelens_train.py adds normalize_activations, and for jumprelu its L0 loss).
    planned = {}
    for cell in cells:
        if cell.system == "saelens" and cell.variant not in planned:
            options = saelens_options(Run(cell, LRS[0], 0, 1), args)
            for key in (
                "architecture",
                "lr",
                "seed",
                "threads",
                *(k.replace("_", "-") for k, _ in cell.params),
            ):
                options.pop(key, None)
            planned[cell.variant] = options
    return {
        "meta": {
            "commands": sorted({r["command"] for r in rows}),
            "code": code_version(("trainer", "bench/saelens_train.py")),
            "code_saelens_rows": code_version(CODE_PATHS["saelens"]),
            "commits": sorted({r["commit"] for r in rows}),
            "eval_protocol": EVAL_PROTOCOL,
            "eval_key": eval_key(),
            "activations": str(args.activations),
            "lm": str(args.lm),
            "tokens": args.tokens,
            "batch_size": args.batch_size,
            "d_sae": args.d_sae,
            "eval_tokens": bench.evaluator.eval_cfg.n_tokens,
            "saelens_version": bench.version,
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
        },
        "rows": rows,
        "saelens_non_default": non_default,
        "saelens_options": planned,
        "missing": missing,
        "not_run": not_run,
        "skipped": skipped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--activations", type=Path, default=Path("runs/demo/activations"), help="harvest dir")
    parser.add_argument("--lm", type=Path, default=Path("runs/demo"), help="run dir with lm/ and tokens/")
    parser.add_argument("--tokens", type=int, default=1_048_576, help="training rows for every SAE")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument(
        "--lrs",
        type=lambda s: tuple(float(v) for v in s.split(",")),
        default=LRS,
        help="each cell's lr sweep",
    )
    parser.add_argument(
        "--seeds",
        type=lambda s: tuple(int(v) for v in s.split(",")),
        default=SEEDS,
        help="the lr sweep runs at the first; the best lr at all",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training (CPU s: 1)")
    parser.add_argument(
        "--also-threads", type=int, default=0, help="also train each cell's best lr once at this many threads"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/pareto"))
    parser.add_argument(
        "--only",
        help="comma-separated cell names or globs (see --list), e.g. 'saelens-topk-*,ours-topk-k=16'",
    )
    parser.add_argument(
        "--ours-set",
        help="ours only: SAEConfig fields changed from the recipe, ';'-separated, e.g. 'revive_rows=0;dtype=fp32' (own lines)",
    )
    parser.add_argument("--list", action="store_true", help="print the cell names and exit")
    parser.add_argument("--report-only", action="store_true", help="train nothing: the report from the cache")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="SAELens's venv")
    parser.add_argument("--no-install", action="store_true", help="skip SAELens if its venv is missing")
    parser.add_argument("--report", type=Path, default=Path("docs/pareto.json"))
    parser.add_argument("--notes", type=Path, help="markdown kept in the report and shown under its summary")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="its pareto-report section")
    parser.add_argument("--plot", type=Path, default=Path("docs/pareto.png"))
    parser.add_argument("--table", type=Path, default=Path("docs/pareto.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    every_cell = all_cells()
    cells = select(every_cell, args.only)
    if args.ours_set:
        overrides = tuple(
            (k, parse_value(v)) for k, v in (kv.split("=", 1) for kv in args.ours_set.split(";"))
        )
        cells = [dataclasses.replace(c, overrides=overrides) for c in cells if c.system == "ours"]
    if args.list or not cells:
        print("\n".join(c.name for c in cells) or f"no cell matches --only {args.only!r}")
        return
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})")
    to_train = [] if args.report_only else cells
    needs_saelens = any(c.system == "saelens" for c in to_train)
    # Importing sae_lens takes tens of CPU seconds: only a bench that trains SAELens checks that
    # it imports; the others read its version from the venv's package metadata.
    if needs_saelens:
        python = ensure_venv(args.venv, install=not args.no_install)
    else:
        python = args.venv / "bin" / "python" if (args.venv / "bin" / "python").exists() else None
    version = saelens_version(python) if python else None
    missing = [
        f"ours {v}: not in this trainer's variants"
        for v in ("paper", "l1_decnorm", "jumprelu", "topk", "batchtopk")
        if v not in SAE_VARIANTS
    ]
    probe = needs_saelens or args.report_only  # the final report says what is not installed
    have_saelens: set[str] = set()
    if python and probe:  # the probe imports sae_lens: done once per venv and version
        found = args.work_dir / f"saelens-architectures-{digest([str(python), version])}.json"
        if not found.exists():
            found.parent.mkdir(parents=True, exist_ok=True)
            found.write_text(json.dumps(sorted(saelens_architectures(python))))
        have_saelens = set(json.loads(found.read_text()))
    if python is None:
        missing.append(f"SAELens: not installed in {args.venv}")
    elif probe:
        missing += [
            f"SAELens {a}: not in SAELens {version}" for a in SAELENS_ARCHITECTURES if a not in have_saelens
        ]
    for cell in to_train:
        installed = cell.variant in SAE_VARIANTS if cell.system == "ours" else cell.variant in have_saelens
        if not installed:
            print(f"{cell.name}: {cell.system} {cell.variant} is not installed; skipping it")
    check_lm(args.activations, args.lm)
    acts, source = write_training_rows(args.activations, args.tokens, args.work_dir)
    d_in = int(np.load(acts, mmap_mode="r").shape[1])
    bench = Bench(args, acts, source, d_in, python, version, Evaluator.load(args.lm))

    for cell in to_train:
        if cell.variant in (SAE_VARIANTS if cell.system == "ours" else have_saelens):
            bench.sweep(cell, args.lrs, args.seeds, args.also_threads or 1)
    report = build_report(bench, every_cell, missing)
    if args.notes:
        report["notes"] = args.notes.read_text().strip()
    for line in report["skipped"]:
        print(f"left out of the report: {line}")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))
    pareto_report.write_all(args.report, args.table, args.readme, args.plot)


if __name__ == "__main__":
    main()
