"""Harvest throughput on a transformers model against our own model's, in the same run.

`trainer.harvest.harvest_shard` (the code `monosemantic harvest` runs) reads, in tokens/s:

  - our one-layer model at the demo shape (d_model 128, d_mlp 512, n_ctx 128, vocab 4096): the
    reference;
  - a tiny random GPT-2 (2 layers, d_model 32, as the tests build) at blocks.1.mlp.hook_post;
  - a random GPT-2-small-shaped model (the 124M config: 12 layers, d_model 768, vocab 50257) at
    blocks.5.mlp.hook_post (the forward stops there: half the blocks, no unembedding) and at
    blocks.11.hook_resid_post (every block, still no unembedding).

Random weights (nothing is downloaded): throughput does not depend on them. Contexts of 128
tokens, bf16 compute where the CPU has it (trainer.lm.hf_model.bf16_supported), as harvest does.
Configurations are interleaved round by round and the best round counts (the machine is shared);
times are the process's CPU seconds (time.process_time), which a loaded machine disturbs less than
wall-clock time (run with OMP_NUM_THREADS=1 to compare one core's work).

    .venv/bin/python bench/bench_hf_harvest.py [--rounds 3] [--tokens 8192]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trainer.config import HarvestConfig, ModelConfig
from trainer.harvest import document_starts, harvest_shard
from trainer.lm.hf_model import HFHookedLM, bf16_supported
from trainer.lm.hooks import OneLayerHooked
from trainer.lm.model import OneLayerTransformer

N_CTX = 128


def gpt2(**shape: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**shape)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=8192, help="rows harvested per call")
    args = parser.parse_args()
    compute = "bf16" if bf16_supported("cpu") else "fp32"
    tiny = gpt2(
        vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    small = gpt2()  # the 124M configuration
    n_params = sum(p.numel() for p in small.parameters())
    models: dict[str, tuple[object, int, str]] = {
        "ours (demo shape, blocks.0.mlp.hook_post)": (
            OneLayerHooked(OneLayerTransformer(ModelConfig()).eval()),
            4096,
            "bf16",
        ),
        "tiny GPT-2 (blocks.1.mlp.hook_post)": (
            HFHookedLM(tiny, "blocks.1.mlp.hook_post", 64, compute),
            320,
            "fp32",
        ),
        f"GPT-2 small, {n_params / 1e6:.0f}M (blocks.5.mlp.hook_post)": (
            HFHookedLM(small, "blocks.5.mlp.hook_post", N_CTX, compute),
            50257,
            "fp32",
        ),
        f"GPT-2 small, {n_params / 1e6:.0f}M (blocks.11.hook_resid_post)": (
            HFHookedLM(small, "blocks.11.hook_resid_post", N_CTX, compute),
            50257,
            "fp32",
        ),
    }
    cfg = HarvestConfig(n_tokens=args.tokens, shard_rows=args.tokens, batch_contexts=16)
    rng = np.random.default_rng(0)

    def harvest_call(lm: object, vocab: int, dtype: str) -> Callable[[], object]:
        tokens = rng.integers(0, vocab, size=200_000).astype(np.int64)
        starts = document_starts(tokens, vocab - 1)
        return lambda: harvest_shard(lm, tokens, starts, args.tokens, cfg, 0, dtype)  # type: ignore[arg-type]

    runs = {name: harvest_call(*spec) for name, spec in models.items()}
    for run in runs.values():
        run()  # warm-up
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - start)
    reference = args.tokens / best[next(iter(runs))]
    print(
        f"harvest throughput (CPU seconds), {args.tokens} tokens a call, best of {args.rounds} rounds, "
        f"compute {compute}:"
    )
    for name, seconds in best.items():
        rate = args.tokens / seconds
        print(f"  {name:58s} {rate:10,.0f} tokens/CPU-s  {rate / reference:6.3f}x ours")


if __name__ == "__main__":
    main()
