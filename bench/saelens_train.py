"""Train one SAE with SAELens's own training code on an activation file; run by SAELens's venv python
(it imports sae_lens, never our trainer).

SAELens 6's `SAETrainer` takes any iterator of activation batches as its data provider: here one
that walks the rows of --acts in a new random order each pass. The SAE is its StandardTrainingSAE
(L1 penalty weighted by decoder norms), TopKTrainingSAE or BatchTopKTrainingSAE (+ AuxK on dead
latents) or JumpReLUTrainingSAE. Everything not given on the command line is SAELens's own
default; bench_pareto.py passes the settings that match our recipe:

  - Adam (SAELens's betas), lr --lr with a linear warm-up over --lr-warm-up-steps and a linear
    decay to 0 over the last --lr-decay-steps (its "constant" scheduler with both); gradient
    norm clipped to 1 (SAETrainer)
  - the L1 (standard) or L0 (jumprelu) coefficient warmed up over --sparsity-warm-up-steps
  - normalize_activations="expected_average_only_in": inputs scaled so their mean norm is
    sqrt(d_in), the factor folded into the weights when training ends (SAETrainer.fit); the
    factor is estimated by SAELens's ActivationScaler over one pass of the file (its default is
    1,000 batches)
  - --decoder-init-norm (its default 0.1; our TopK's unit init is 1.0)
  - --dead-feature-window (its default 1,000 steps): AuxK (topk, batchtopk) and the pre-activation
    loss (jumprelu) only see a latent as dead after that many steps without firing

bench.json records, beside the training wall and CPU time (from reading --acts to the saved SAE),
every setting that differs from SAELens's defaults ("non_default": the architecture's training
config against the one built from d_in, d_sae and nothing else, and the trainer's settings against
LanguageModelSAERunnerConfig's defaults, the config a SAELens user starts from).
check_reconstruction.npy: SAE.load_from_disk(--out) applied to the first --check-rows rows.

    /tmp/saelens-venv/bin/python bench/saelens_train.py --acts acts.npy --architecture topk --k 16 \
        --out /tmp/pareto/saelens-topk-k16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# No Weights & Biases and no Hugging Face hub: everything here is local.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sae_lens import __version__ as SAE_LENS_VERSION  # noqa: E402
from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig, SAETrainerConfig  # noqa: E402
from sae_lens.saes.sae import SAE, TrainingSAE, TrainingSAEConfig  # noqa: E402
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402

HOOK_NAME = "blocks.0.mlp.hook_post"  # where the activations come from (trainer.sae.HOOK_NAME)
NORM_ESTIMATE_BATCHES = 1000  # SAETrainerConfig.n_batches_for_norm_estimate's default
CHECK_FILE = "check_reconstruction.npy"  # SAELens's reconstruction of the first --check-rows rows


class ShuffledBatches(Iterator[torch.Tensor]):
    """fp32 batches acts[batch_size, d_in] forever; each pass over the rows in a new random order."""

    def __init__(self, acts: np.ndarray, batch_size: int, seed: int) -> None:
        self.acts = acts
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)

    def __next__(self) -> torch.Tensor:
        while len(self.order) < self.batch_size:
            self.order = torch.cat([self.order, torch.randperm(len(self.acts), generator=self.generator)])
        rows, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return torch.from_numpy(self.acts[rows.numpy()]).float()


def sae_classes(architecture: str) -> tuple[type[TrainingSAE], type[TrainingSAEConfig]]:
    """SAELens's training SAE and config classes of `architecture` (imported only when used, so a
    SAELens without one of them still trains the others)."""
    if architecture == "standard":
        from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

        return StandardTrainingSAE, StandardTrainingSAEConfig
    if architecture == "topk":
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        return TopKTrainingSAE, TopKTrainingSAEConfig
    if architecture == "batchtopk":
        from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

        return BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    return JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig


def sae_options(args: argparse.Namespace) -> dict[str, Any]:
    """The architecture's training-config fields set here, beyond d_in and d_sae."""
    options: dict[str, Any] = {"normalize_activations": "expected_average_only_in"}
    if args.decoder_init_norm is not None:
        options["decoder_init_norm"] = args.decoder_init_norm
    if args.architecture == "standard":
        options.update(l1_coefficient=args.l1_coefficient, l1_warm_up_steps=args.sparsity_warm_up_steps)
    elif args.architecture in ("topk", "batchtopk"):
        options["k"] = args.k
    else:  # jumprelu: its own L0 target (GemmaScope 2's quadratic loss), and Anthropic's
        # pre-activation loss on dead latents at our coefficient (the same formula)
        options.update(
            jumprelu_sparsity_loss_mode="quadratic",
            target_l0=args.target_l0,
            l0_warm_up_steps=args.sparsity_warm_up_steps,
            pre_act_loss_coefficient=args.pre_act_loss_coefficient,
        )
    return options


def changed(config: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """The fields of dataclass `config` whose value differs from `defaults` (same names)."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {k: v for k, v in values.items() if k in defaults and defaults[k] != v}


def field_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def non_default_settings(sae_cfg: Any, trainer_cfg: SAETrainerConfig, n_norm_batches: int) -> dict[str, Any]:
    """Every setting of this training that differs from what a SAELens user gets by default: the
    SAE's training config against the one built from d_in and d_sae alone, the trainer's against
    LanguageModelSAERunnerConfig's defaults."""
    sae_defaults = dataclasses.asdict(type(sae_cfg)(d_in=sae_cfg.d_in, d_sae=sae_cfg.d_sae))
    sae_defaults.pop("metadata", None)
    result = changed(sae_cfg, sae_defaults)
    runner = field_defaults(LanguageModelSAERunnerConfig)
    runner["lr_end"] = trainer_cfg.lr / 10  # what its __post_init__ makes of lr_end=None
    result.update(
        changed(trainer_cfg, {k: v for k, v in runner.items() if k not in ("logger", "checkpoint_path")})
    )
    result["train_batch_size_tokens"] = trainer_cfg.train_batch_size_samples
    result["training_tokens"] = trainer_cfg.total_training_samples
    if n_norm_batches != runner["n_batches_for_norm_estimate"]:
        result["n_batches_for_norm_estimate"] = n_norm_batches
    for key in ("train_batch_size_tokens", "training_tokens"):
        if result[key] == runner[key]:
            del result[key]
    return {k: v for k, v in result.items() if not isinstance(v, (dict, list)) or v}


def train(args: argparse.Namespace) -> dict[str, object]:
    """Train, save into args.out, and return bench.json's contents."""
    torch.set_num_threads(args.threads)
    started, started_cpu = time.perf_counter(), time.process_time()
    acts = np.load(args.acts)  # [N, d_in], fully in memory like our trainer's .npy source
    if acts.ndim != 2:
        raise SystemExit(f"{args.acts}: expected [N, d_in] activations, got shape {acts.shape}")
    args.d_in = int(acts.shape[1])
    n_steps = args.n_tokens // args.batch_size
    torch.manual_seed(args.seed)  # SAELens initialises its weights from torch's global generator
    sae_class, config_class = sae_classes(args.architecture)
    sae_cfg = config_class(d_in=args.d_in, d_sae=args.d_sae, **sae_options(args))
    sae = sae_class(sae_cfg)
    sae.cfg.metadata.model_name = args.model_name
    sae.cfg.metadata.hook_name = HOOK_NAME
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_steps * args.batch_size,
        train_batch_size_samples=args.batch_size,
        lr=args.lr,
        lr_end=args.lr / 10,  # LanguageModelSAERunnerConfig's post-init default (unused by "constant")
        lr_scheduler_name="constant",
        lr_warm_up_steps=args.lr_warm_up_steps,
        lr_decay_steps=args.lr_decay_steps,
        device="cpu",
        autocast=args.autocast,
        dead_feature_window=args.dead_feature_window,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(
        cfg=trainer_cfg, sae=sae, data_provider=ShuffledBatches(acts, args.batch_size, args.seed)
    )
    # fit() would estimate the norm from the training iterator itself; estimating it here over one
    # pass of a separate iterator leaves every training pass whole (fit keeps a factor already set).
    n_norm_batches = max(1, min(NORM_ESTIMATE_BATCHES, len(acts) // args.batch_size))
    trainer.activation_scaler.estimate_scaling_factor(
        d_in=args.d_in,
        data_provider=ShuffledBatches(acts, args.batch_size, args.seed + 1),
        n_batches_for_norm_estimate=n_norm_batches,
    )
    scaling_factor = trainer.activation_scaler.scaling_factor
    # Before fit(), which folds the normalisation into the weights and resets the config's field.
    non_default = non_default_settings(sae_cfg, trainer_cfg, n_norm_batches)
    trained = trainer.fit()  # folds the scaling factor into the weights
    trained.save_inference_model(args.out)  # topk: folds the decoder norms too
    wall_seconds = time.perf_counter() - started
    return {
        "wall_seconds": round(wall_seconds, 2),
        "cpu_seconds": round(time.process_time() - started_cpu, 2),
        "n_tokens": trainer.n_training_samples,
        "n_steps": trainer.n_training_steps,
        "sae_lens_version": SAE_LENS_VERSION,
        "architecture": args.architecture,
        "norm_scaling_factor": scaling_factor,
        "train_l0": trained.cfg.metadata.l0,
        "train_dead_features": trained.cfg.metadata.num_dead_features,
        "torch_threads": torch.get_num_threads(),
        "non_default": {
            k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
            for k, v in non_default.items()
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


@torch.no_grad()
def write_check_reconstruction(acts_path: Path, out: Path, n_rows: int) -> None:
    """SAELens's own reading of the saved SAE (SAE.load_from_disk) applied to the first n_rows rows of
    the activations, saved beside it so that other loaders can be checked against it."""
    rows = torch.from_numpy(np.load(acts_path, mmap_mode="r")[:n_rows].astype(np.float32))
    sae = SAE.load_from_disk(out).eval()
    np.save(out / CHECK_FILE, sae(rows).float().numpy())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--acts", type=Path, required=True, help=".npy float16/float32 [N, d_in]")
    parser.add_argument(
        "--architecture", choices=("standard", "topk", "batchtopk", "jumprelu"), required=True
    )
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--n-tokens", type=int, default=1_048_576, help="training rows (a multiple of batch)")
    parser.add_argument("--lr", type=float, default=3e-4, help="SAELens's default: 3e-4")
    parser.add_argument("--lr-warm-up-steps", type=int, default=0, help="SAELens's default: 0")
    parser.add_argument(
        "--lr-decay-steps", type=int, default=0, help="linear decay to 0 at the end; default 0"
    )
    parser.add_argument("--l1-coefficient", type=float, default=5.0, help="standard only")
    parser.add_argument("--k", type=int, default=32, help="topk / batchtopk")
    parser.add_argument("--target-l0", type=float, default=16.0, help="jumprelu (quadratic L0 loss)")
    parser.add_argument(
        "--pre-act-loss-coefficient", type=float, default=0.01, help="jumprelu: Anthropic's, on dead latents"
    )
    parser.add_argument(
        "--sparsity-warm-up-steps",
        type=int,
        default=0,
        help="standard's L1 / jumprelu's L0 warm-up (default 0)",
    )
    parser.add_argument(
        "--decoder-init-norm",
        type=float,
        default=None,
        help="decoder rows' initial norm (SAELens's default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast (SAELens's `autocast`)")
    parser.add_argument(
        "--dead-feature-window", type=int, default=1000, help="steps without firing that make a latent dead"
    )
    parser.add_argument("--model-name", default="monosemantic-1l", help="recorded in cfg.json's metadata")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--check-rows", type=int, default=4096, help=f"rows reconstructed into {CHECK_FILE}")
    args = parser.parse_args()
    if args.n_tokens < args.batch_size:
        raise SystemExit("--n-tokens must be at least --batch-size")
    result = train(args)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2))
    write_check_reconstruction(args.acts, args.out, args.check_rows)
    print(json.dumps({k: v for k, v in result.items() if k != "args"}))


if __name__ == "__main__":
    main()
