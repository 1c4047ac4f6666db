"""FVU against L0: our SAE variants and SAELens's, trained on the same activations with the same
token budget, all evaluated by our evaluator on held-out text.

The first --tokens rows of a harvest (manifest.json + acts_*.npy) are written once as one float32
.npy; every SAE trains on exactly those rows (one pass at the default budget). Ours trains
in-process (`train_sae`, the variant's own recipe); SAELens trains in its own venv with its own
`SAETrainer` (bench/saelens_train.py: its defaults and tutorial schedule), and its saved SAE is read
back by our loader (checked against SAELens's own `SAE.load_from_disk` on 4096 rows). Each SAE is
then evaluated by `trainer.evaluate.evaluate_sae` on --lm's held-out tokens: FVU, L0, dead fraction,
CE loss recovered. Wall time is training only (activation file to saved SAE), for both alike.

Every point's result is cached as JSON in --work-dir under a hash of its settings: a re-run only
trains what changed (ours: also everything with --retrain-ours, since its recipe lives in code).
One training runs at a time.

    .venv/bin/python bench/bench_pareto.py --activations runs/demo/activations --lm runs/demo \
        [--tokens 1048576] [--only 'saelens-*,ours-topk-k=16'] [--retrain-ours] [--list] [--report-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from saelens_venv import DEFAULT_VENV, ensure_venv, saelens_version

from trainer.config import EvalConfig, SAEConfig, load_config
from trainer.evaluate import evaluate_sae
from trainer.model import OneLayerTransformer
from trainer.provenance import ModelIdentity, ModelMismatch, check_same_model
from trainer.sae import SparseAutoencoder, train_sae
from trainer.tokenizer import load_token_split

SAELENS_TRAIN = Path(__file__).with_name("saelens_train.py")
CHECK_FILE = "check_reconstruction.npy"  # written by saelens_train.py
TARGET_L0S = (8, 16, 32)
KS = (8, 16, 32)
# Standard (L1) SAELens SAEs: l1_coefficient values whose held-out L0 spans about 8-40 on the demo
# run's activations at the default budget (3: 64, 5: 41, 10: 22, 20: 8.2; the L1 penalty is on
# activations normalised to mean norm sqrt(d_in), weighted by decoder norms).
SAELENS_L1 = (3.0, 5.0, 10.0, 20.0)
# SAELens's default lr (3e-4, set for runs of tens of thousands of steps) leaves a 256-step run far
# from trained (topk k=16: held-out FVU 0.64 against 0.40 at 1e-3), so it gets our TopK's lr, 1e-3.
SAELENS_LR = 1e-3
# How held-out metrics are measured; a cached result of another protocol is re-evaluated from its
# saved SAE (or retrained when that is gone). 1: the first --eval tokens of the validation split;
# 2: windows spread over the whole split (trainer.evaluate.context_windows).
EVAL_PROTOCOL = 2


# ---------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """One SAE on the plot: a system's variant at one sparsity setting."""

    system: str  # "ours" or "saelens"
    variant: str  # ours: SAEConfig.variant; SAELens: its architecture (standard, topk)
    setting: str  # what varies along the variant's line, as shown in the table
    params: tuple[tuple[str, Any], ...]  # those settings as keyword arguments

    @property
    def name(self) -> str:
        return f"{self.system}-{self.variant}-{self.setting}".replace(" ", "-")

    @property
    def series(self) -> str:
        bf16 = " (bf16 autocast)" if dict(self.params).get("autocast") else ""
        return f"{self.system} {self.variant}{bf16}"


def supports_target_l0() -> bool:
    return "target_l0" in {f.name for f in dataclasses.fields(SAEConfig)}


def all_points(saelens_l1: tuple[float, ...]) -> list[Point]:
    points = []
    if supports_target_l0():
        for variant in ("paper", "l1_decnorm", "jumprelu"):
            points += [Point("ours", variant, f"L0={t}", (("target_l0", float(t)),)) for t in TARGET_L0S]
    else:
        warnings.warn(
            "SAEConfig has no target_l0 yet: ours paper/l1_decnorm/jumprelu use the default "
            "l1_coefficient, one point each",
            stacklevel=1,
        )
        points += [Point("ours", v, "l1=default", ()) for v in ("paper", "l1_decnorm", "jumprelu")]
    for variant in ("topk", "batchtopk", "matryoshka_batchtopk"):
        points += [Point("ours", variant, f"k={k}", (("k", k),)) for k in KS]
    points += [Point("saelens", "standard", f"l1={c:g}", (("l1_coefficient", c),)) for c in saelens_l1]
    points += [Point("saelens", "topk", f"k={k}", (("k", k),)) for k in KS]
    points.append(Point("saelens", "topk", "k=16 bf16", (("k", 16), ("autocast", True))))
    return points


def select(points: list[Point], only: str | None) -> list[Point]:
    """The points whose name matches any of the comma-separated names or glob patterns."""
    if not only:
        return points
    patterns = [f.strip() for f in only.split(",") if f.strip()]
    return [p for p in points if any(fnmatch.fnmatchcase(p.name, pattern) for pattern in patterns)]


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


def ours_config(point: Point, d_in: int, args: argparse.Namespace) -> SAEConfig:
    return SAEConfig(
        d_in=d_in,
        d_sae=args.d_sae,
        variant=point.variant,  # type: ignore[arg-type]
        batch_size=args.batch_size,
        n_tokens=args.tokens,
        seed=args.seed,
        **dict(point.params),
    )


def point_settings(
    point: Point, d_in: int, source: str, args: argparse.Namespace, version: str | None
) -> dict:
    """Everything that determines a point's result: its cache key."""
    common = {"system": point.system, "variant": point.variant, "activations": source, "lm": str(args.lm)}
    if point.system == "ours":
        return {**common, "sae": dataclasses.asdict(ours_config(point, d_in, args))}
    return {
        **common,
        "sae_lens_version": version,
        "d_sae": args.d_sae,
        "batch_size": args.batch_size,
        "n_tokens": args.tokens,
        "lr": args.saelens_lr,
        "seed": args.seed,
        **({"dead_feature_window": args.saelens_dead_window} if args.saelens_dead_window else {}),
        **dict(point.params),
    }


def train_ours(point: Point, acts: Path, d_in: int, out: Path, args: argparse.Namespace) -> dict:
    cfg = ours_config(point, d_in, args)
    started, started_cpu = time.perf_counter(), time.process_time()
    train_sae(cfg, acts, out, progress=False)
    return {
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - started_cpu,
        "n_tokens": cfg.n_steps * cfg.batch_size,
    }


def train_saelens(point: Point, python: Path, acts: Path, out: Path, args: argparse.Namespace) -> dict | None:
    params = dict(point.params)
    command = [
        str(python),
        str(SAELENS_TRAIN),
        f"--acts={acts}",
        f"--architecture={point.variant}",
        f"--d-sae={args.d_sae}",
        f"--batch-size={args.batch_size}",
        f"--n-tokens={args.tokens}",
        f"--lr={args.saelens_lr}",
        f"--seed={args.seed}",
        f"--out={out}",
    ]
    if "l1_coefficient" in params:
        command.append(f"--l1-coefficient={params['l1_coefficient']}")
    if "k" in params:
        command.append(f"--k={params['k']}")
    if params.get("autocast"):
        command.append("--autocast")
    if args.saelens_dead_window:
        command.append(f"--dead-feature-window={args.saelens_dead_window}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = (out / "train.log").read_text()[-1500:]
        print(f"  SAELens training of {point.name} failed (exit {proc.returncode}):\n{tail}")
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
    """The LM and held-out tokens of a run, loaded once (as trainer.pipeline.run_evaluate does)."""

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


# ---------------------------------------------------------------------------- report


def table(results: list[dict]) -> str:
    header = (
        "| system | variant | setting | L0 | FVU | dead % | CE loss recovered % | wall s | CPU s | tokens/s |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in results:
        cpu = r.get("cpu_seconds")
        lines.append(
            f"| {r['system']} | {r['variant']} | {r['setting']} | {r['l0']:.1f} | {r['fvu']:.4f} | "
            f"{100 * r['dead_fraction']:.1f} | {100 * r['ce_loss_recovered']:.1f} | {r['wall_seconds']:.0f} | "
            f"{'—' if cpu is None else f'{cpu:.0f}'} | {r['n_tokens'] / r['wall_seconds']:,.0f} |"
        )
    return "\n".join(lines)


def cpu_ratios(results: list[dict]) -> str:
    """Median training CPU time of each of our variants over SAELens's fp32 runs of its family
    (L1-style against its standard SAE, TopK-style against its TopK): CPU seconds, because the
    machine is shared and wall time moves with the load."""

    def median_cpu(rows: list[dict]) -> float | None:
        values = sorted(r["cpu_seconds"] for r in rows if r.get("cpu_seconds"))
        return values[len(values) // 2] if values else None

    saelens = {
        family: median_cpu(
            [
                r
                for r in results
                if r["system"] == "saelens" and r["variant"] == family and "bf16" not in r["setting"]
            ]
        )
        for family in ("standard", "topk")
    }
    parts = []
    for variant in sorted({r["variant"] for r in results if r["system"] == "ours"}):
        family = "topk" if variant in ("topk", "batchtopk", "matryoshka_batchtopk") else "standard"
        ours = median_cpu([r for r in results if r["system"] == "ours" and r["variant"] == variant])
        if ours and saelens[family]:
            parts.append(f"{variant} {ours / saelens[family]:.2f}x of SAELens {family}")
    return "Median training CPU time, ours over SAELens fp32: " + "; ".join(parts) + "." if parts else ""


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5.5))
    l0s = [r["l0"] for r in results]
    for series in sorted({r["series"] for r in results}):
        rows = sorted((r for r in results if r["series"] == series), key=lambda r: r["l0"])
        ours = series.startswith("ours")
        ax.plot(
            [r["l0"] for r in rows],
            [r["fvu"] for r in rows],
            marker="o" if ours else "s",
            linestyle="-" if ours else "--",
            label=series,
        )
    ax.set_xscale("log")
    ax.set_xticks([2, 4, 8, 16, 32, 64, 128, 256])
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(min(l0s) / 1.3, max(l0s) * 1.3)
    ax.set_xlabel("L0 (active latents per token, held-out)")
    ax.set_ylabel("FVU (held-out, lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


# ---------------------------------------------------------------------------- main


def run_point(
    point: Point,
    args: argparse.Namespace,
    acts: Path,
    source: str,
    d_in: int,
    python: Path | None,
    version: str | None,
    evaluator: Evaluator,
    train: bool = True,
) -> dict | None:
    """The point's result: from the cache, else (when `train`) trained, evaluated and cached."""
    settings = point_settings(point, d_in, source, args, version)
    key = f"{point.name}-{digest(settings)}"
    result_path = args.work_dir / "results" / f"{key}.json"
    retrain = train and point.system == "ours" and args.retrain_ours
    out = args.work_dir / "saes" / key
    if result_path.exists() and not retrain:
        cached = json.loads(result_path.read_text())
        if cached.get("eval_protocol", 1) == EVAL_PROTOCOL:
            print(f"{point.name}: cached ({result_path.name})")
            return cached
        if (out / "cfg.json").exists():
            print(f"{point.name}: cached, re-evaluated ({result_path.name})", flush=True)
            metrics = evaluator(SparseAutoencoder.load(out), out)
            metrics.pop("n_tokens")  # the held-out count; the result's n_tokens is the training budget
            cached.update(metrics, eval_protocol=EVAL_PROTOCOL)
            result_path.write_text(json.dumps(cached, indent=2))
            return cached
    if not train or (point.system == "saelens" and python is None):
        return None
    shutil.rmtree(out, ignore_errors=True)
    print(f"{point.name}: training...", flush=True)
    if point.system == "ours":
        trained = train_ours(point, acts, d_in, out, args)
    else:
        assert python is not None
        trained = train_saelens(point, python, acts, out, args)
        if trained is None:
            return None
    sae = SparseAutoencoder.load(out)
    extra = {}
    if point.system == "saelens":
        extra["loader_max_abs_diff"] = loader_check(sae, acts, out)
        extra["train_l0"] = trained.get("train_l0")
    metrics = evaluator(sae, out)
    result = {
        "system": point.system,
        "variant": point.variant,
        "setting": point.setting,
        "series": point.series,
        **metrics,
        "wall_seconds": trained["wall_seconds"],
        "cpu_seconds": trained.get("cpu_seconds"),
        "n_tokens": trained["n_tokens"],
        **extra,
        "eval_protocol": EVAL_PROTOCOL,
        "sae_dir": str(out),
        "settings": settings,
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2))
    check = f", loader |Δ| {extra['loader_max_abs_diff']:.2g}" if extra else ""
    print(
        f"  L0 {result['l0']:.1f}, FVU {result['fvu']:.4f}, dead {100 * result['dead_fraction']:.1f}%, "
        f"CE rec {100 * result['ce_loss_recovered']:.1f}%, {result['wall_seconds']:.0f} s "
        f"({result['cpu_seconds'] or float('nan'):.0f} CPU s){check}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--activations", type=Path, default=Path("runs/demo/activations"), help="harvest dir")
    parser.add_argument("--lm", type=Path, default=Path("runs/demo"), help="run dir with lm/ and tokens/")
    parser.add_argument("--tokens", type=int, default=1_048_576, help="training rows for every SAE")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--saelens-lr", type=float, default=SAELENS_LR)
    parser.add_argument(
        "--saelens-l1",
        type=lambda s: tuple(float(v) for v in s.split(",")),
        default=SAELENS_L1,
        help="comma-separated l1_coefficient values of SAELens's standard SAEs",
    )
    parser.add_argument(
        "--saelens-dead-window", type=int, help="SAELens's dead_feature_window in steps (default: its 1000)"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/pareto"))
    parser.add_argument(
        "--only", help="comma-separated point names or globs (see --list), e.g. 'saelens-*,ours-topk-k=16'"
    )
    parser.add_argument("--retrain-ours", action="store_true", help="retrain our points even if cached")
    parser.add_argument("--list", action="store_true", help="print the point names and exit")
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: table and plot from the cache"
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="SAELens's venv")
    parser.add_argument("--no-install", action="store_true", help="skip SAELens if its venv is missing")
    parser.add_argument("--plot", type=Path, default=Path("docs/pareto.png"))
    parser.add_argument("--table", type=Path, default=Path("docs/pareto.md"))
    args = parser.parse_args()

    every_point = all_points(args.saelens_l1)
    points = select(every_point, args.only)
    if args.list or not points:
        print("\n".join(p.name for p in points) or f"no point matches --only {args.only!r}")
        return
    cpu = cpu_model()
    print(f"CPU: {cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})")
    # Without a SAELens point to train, the venv is only asked its version (for cached results).
    if args.report_only:
        points = []
    needs_saelens = any(p.system == "saelens" for p in points)
    python = ensure_venv(args.venv, install=needs_saelens and not args.no_install)
    version = saelens_version(python) if python else None
    check_lm(args.activations, args.lm)
    acts, source = write_training_rows(args.activations, args.tokens, args.work_dir)
    d_in = int(np.load(acts, mmap_mode="r").shape[1])
    evaluator = Evaluator.load(args.lm)

    results = []
    for point in every_point:  # the points not selected are reported from the cache, if there
        run = point in points
        result = run_point(point, args, acts, source, d_in, python, version, evaluator, train=run)
        if result is not None:
            results.append(result)
    results.sort(key=lambda r: (r["system"], r["variant"], r["series"], r["l0"]))
    budget = f"{args.tokens:,} tokens, batch {args.batch_size}, d_sae {args.d_sae}"
    diffs = [r["loader_max_abs_diff"] for r in results if "loader_max_abs_diff" in r]
    loader = f"; our loader vs SAE.load_from_disk: max |Δ| {max(diffs):.2g}" if diffs else ""
    markdown = (
        f"FVU against L0 on {args.activations} ({budget}); held-out metrics from our evaluator "
        f"({evaluator.eval_cfg.n_tokens:,} tokens of {args.lm}); SAELens {version or 'not run'} "
        f"(lr {args.saelens_lr:g}){loader}; CPU: {cpu}, {os.cpu_count()} cores, shared. "
        f"Wall and CPU time: training only. {cpu_ratios(results)}\n\n{table(results)}\n"
    )
    print(f"\n{markdown}")
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(markdown)
    plot(results, args.plot, f"FVU vs L0, {budget}")
    print(f"wrote {args.table} and {args.plot}")


if __name__ == "__main__":
    main()
