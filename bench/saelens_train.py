"""Train one SAE with SAELens's own training code on an activation file; run by SAELens's venv python
(it imports sae_lens, never our trainer).

SAELens 6's `SAETrainer` takes any iterator of activation batches as its data provider: here one
that walks the rows of --acts in a new random order each pass. The SAE is its StandardTrainingSAE
(L1 penalty weighted by decoder norms) or TopKTrainingSAE (+ AuxK on dead latents); everything not
given on the command line is SAELens's own default or the recipe of its training tutorial
(docs/training_saes.md):

  - Adam (0.9, 0.999), constant lr with no warm-up and a linear decay to 0 over the last 20% of
    the steps (lr_decay_steps = steps // 5); gradient norm clipped to 1 (SAETrainer)
  - l1 warm-up over the first 5% of the steps (l1_warm_up_steps = steps // 20)
  - normalize_activations="expected_average_only_in": inputs scaled so their mean norm is
    sqrt(d_in), the factor folded into the weights when training ends (SAETrainer.fit); the
    factor is estimated by SAELens's ActivationScaler over one pass of the file (its default is
    1,000 batches)
  - decoder rows initialised to norm 0.1, the encoder to the decoder's transpose, b_dec = 0,
    apply_b_dec_to_input=True (TrainingSAEConfig defaults)
  - dead_feature_window = 1000 steps (SAETrainerConfig default; --dead-feature-window): the AuxK
    loss of topk only sees a latent as dead after that many steps without firing, so a run of
    fewer steps never uses it
  - topk: aux_loss_coefficient 1, rescale_acts_by_decoder_norm (folded into the weights on save)

Writes SAELens's inference layout (cfg.json + sae_weights.safetensors) into --out, plus bench.json
with the training wall time (from reading --acts to the saved SAE) and the arguments, and
check_reconstruction.npy: SAE.load_from_disk(--out) applied to the first --check-rows rows.

    /tmp/saelens-venv/bin/python bench/saelens_train.py --acts acts.npy --architecture topk --k 16 \
        --out /tmp/pareto/saelens-topk-k16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

# No Weights & Biases and no Hugging Face hub: everything here is local.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sae_lens import __version__ as SAE_LENS_VERSION  # noqa: E402
from sae_lens.config import LoggingConfig, SAETrainerConfig  # noqa: E402
from sae_lens.saes.sae import SAE, TrainingSAE  # noqa: E402
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig  # noqa: E402
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig  # noqa: E402
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


def make_sae(args: argparse.Namespace, n_steps: int) -> TrainingSAE:
    common = {
        "d_in": args.d_in,
        "d_sae": args.d_sae,
        "normalize_activations": "expected_average_only_in",
    }
    if args.architecture == "standard":
        return StandardTrainingSAE(
            StandardTrainingSAEConfig(
                **common, l1_coefficient=args.l1_coefficient, l1_warm_up_steps=n_steps // 20
            )
        )
    return TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=args.k))


def train(args: argparse.Namespace) -> dict[str, object]:
    """Train, save into args.out, and return bench.json's contents."""
    started, started_cpu = time.perf_counter(), time.process_time()
    acts = np.load(args.acts)  # [N, d_in], fully in memory like our trainer's .npy source
    if acts.ndim != 2:
        raise SystemExit(f"{args.acts}: expected [N, d_in] activations, got shape {acts.shape}")
    args.d_in = int(acts.shape[1])
    n_steps = args.n_tokens // args.batch_size
    torch.manual_seed(args.seed)  # SAELens initialises its weights from torch's global generator
    sae = make_sae(args, n_steps)
    sae.cfg.metadata.model_name = args.model_name
    sae.cfg.metadata.hook_name = HOOK_NAME
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=n_steps * args.batch_size,
            train_batch_size_samples=args.batch_size,
            lr=args.lr,
            lr_end=args.lr / 10,  # LanguageModelSAERunnerConfig's default (unused by "constant")
            lr_scheduler_name="constant",
            lr_warm_up_steps=0,
            lr_decay_steps=n_steps // 5,
            device="cpu",
            autocast=args.autocast,
            dead_feature_window=args.dead_feature_window,
            logger=LoggingConfig(log_to_wandb=False),
        ),
        sae=sae,
        data_provider=ShuffledBatches(acts, args.batch_size, args.seed),
    )
    # fit() would estimate the norm from the training iterator itself; estimating it here over one
    # pass of a separate iterator leaves every training pass whole (fit keeps a factor already set).
    trainer.activation_scaler.estimate_scaling_factor(
        d_in=args.d_in,
        data_provider=ShuffledBatches(acts, args.batch_size, args.seed + 1),
        n_batches_for_norm_estimate=max(1, min(NORM_ESTIMATE_BATCHES, len(acts) // args.batch_size)),
    )
    scaling_factor = trainer.activation_scaler.scaling_factor
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
    parser.add_argument("--architecture", choices=("standard", "topk"), required=True)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--n-tokens", type=int, default=1_048_576, help="training rows (a multiple of batch)")
    parser.add_argument("--lr", type=float, default=3e-4, help="SAELens's default: 3e-4")
    parser.add_argument("--l1-coefficient", type=float, default=5.0, help="standard only")
    parser.add_argument("--k", type=int, default=32, help="topk only")
    parser.add_argument("--seed", type=int, default=42)
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
