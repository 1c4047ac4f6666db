"""The other two compute stages against SAE training, at the demo shapes (A/1: d_model 128,
d_mlp 512, n_ctx 128, vocab 4096; SAE 512 -> 4096, batch 4096):

  1. one-layer LM training tokens/s: our `trainer.lm.train.train_step` (bf16 autocast, bf16 logits in the
     loss) against a plain fp32 eager step of the same model (fp32 loss, same AdamW and clipping);
  2. harvesting tokens/s (`trainer.harvest.harvest_shard`, bf16 forward to the MLP hook) against our
     SAE training tokens/s: harvesting should be >= 10x faster, so that it is never the bottleneck.

Configurations are interleaved round by round and the best round counts (the machine is shared).

    /work/venv/bin/python bench/bench_lm.py [--rounds 3] [--lm-steps 3] [--harvest-tokens 65536]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from trainer.config import HarvestConfig, LMTrainConfig, ModelConfig, SAEConfig
from trainer.harvest import document_starts, harvest_shard
from trainer.lm.model import OneLayerTransformer
from trainer.lm.train import make_optimizer, sample_batch, train_step
from trainer.sae import SparseAutoencoder, TrainState
from trainer.sae import train_step as sae_train_step
from trainer.sae.variants import peak_lr


def reference_lm_step(
    model: OneLayerTransformer, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> float:
    """Plain fp32 eager: no autocast, fp32 loss."""
    out = model(x, y)
    assert out.loss is not None
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return out.loss.item()


def best_seconds(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Seconds per call of each named function: the best of `rounds` interleaved rounds."""
    for run in runs.values():
        run()  # warm-up
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def sae_state(variant: str, batch: int) -> TrainState:
    cfg = SAEConfig(variant=variant, batch_size=batch, n_tokens=batch * 1000, dtype="bf16")  # type: ignore[arg-type]
    sae = SparseAutoencoder(cfg).train()
    return TrainState(
        cfg=cfg,
        sae=sae,
        optimizer=torch.optim.Adam(sae.parameters(), lr=peak_lr(cfg), fused=True),
        source=None,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(0),
        steps_since_fired=torch.zeros(cfg.d_sae, dtype=torch.long),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lm-steps", type=int, default=3, help="LM steps per round and configuration")
    parser.add_argument("--lm-batch", type=int, default=32, help="contexts per LM step (the demo's)")
    parser.add_argument("--harvest-tokens", type=int, default=65_536, help="rows per harvest round")
    parser.add_argument("--sae-batch", type=int, default=4096)
    args = parser.parse_args()
    torch.manual_seed(0)
    model_cfg = ModelConfig()
    lm_cfg = LMTrainConfig(batch_size=args.lm_batch)
    tokens = np.random.default_rng(0).integers(0, model_cfg.vocab_size, 2_000_000).astype(np.uint16)
    n_ctx = model_cfg.n_ctx
    batches = [sample_batch(tokens, n_ctx, args.lm_batch, seed=0, step=i) for i in range(args.lm_steps)]
    models = {}
    for name in ("ours", "fp32"):
        torch.manual_seed(0)
        model = OneLayerTransformer(model_cfg).train()
        models[name] = (model, make_optimizer(model, lm_cfg))
    ours_model, ours_opt = models["ours"]
    ref_model, ref_opt = models["fp32"]

    def ours_lm() -> None:
        for x, y in batches:
            train_step(ours_model, ours_opt, x, y, "bf16")

    def ref_lm() -> None:
        for x, y in batches:
            reference_lm_step(ref_model, ref_opt, x, y)

    harvest_model = OneLayerTransformer(model_cfg).eval()
    starts = document_starts(tokens, eot_id=0)
    harvest_cfg = HarvestConfig(n_tokens=args.harvest_tokens, shard_rows=args.harvest_tokens)
    x_sae = torch.randn(args.sae_batch, model_cfg.d_mlp).relu()
    states = {variant: sae_state(variant, args.sae_batch) for variant in ("paper", "topk")}
    seconds = best_seconds(
        {
            "lm_ours": ours_lm,
            "lm_fp32": ref_lm,
            "harvest": lambda: harvest_shard(
                harvest_model, tokens, starts, args.harvest_tokens, harvest_cfg, 0, "bf16"
            ),
            "sae_paper": lambda: sae_train_step(states["paper"], x_sae, compute_l0=False),
            "sae_topk": lambda: sae_train_step(states["topk"], x_sae, compute_l0=False),
        },
        args.rounds,
    )
    lm_tokens = args.lm_steps * args.lm_batch * n_ctx
    tps = {
        "lm_ours": lm_tokens / seconds["lm_ours"],
        "lm_fp32": lm_tokens / seconds["lm_fp32"],
        "harvest": args.harvest_tokens / seconds["harvest"],
        "sae_paper": args.sae_batch / seconds["sae_paper"],
        "sae_topk": args.sae_batch / seconds["sae_topk"],
    }
    print(f"threads {torch.get_num_threads()}  model {model_cfg}  best of {args.rounds} rounds")
    print(f"LM training, ours (bf16 autocast, bf16 loss): {tps['lm_ours']:10,.0f} tokens/s")
    print(f"LM training, plain fp32 eager             : {tps['lm_fp32']:10,.0f} tokens/s")
    print(f"  speedup {tps['lm_ours'] / tps['lm_fp32']:.2f}x")
    print(f"harvest (bf16 forward to the MLP hook)    : {tps['harvest']:10,.0f} tokens/s")
    for variant in ("paper", "topk"):
        ratio = tps["harvest"] / tps[f"sae_{variant}"]
        verdict = "ok" if ratio >= 10 else "BELOW the 10x target"
        print(
            f"SAE training, ours, {variant:<5} 512->4096     : {tps[f'sae_{variant}']:10,.0f} tokens/s  "
            f"harvest / SAE training = {ratio:.1f}x ({verdict})"
        )


if __name__ == "__main__":
    main()
