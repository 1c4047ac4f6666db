"""Regenerate the SAELens fixture folders beside this script (run with SAELens installed, e.g.
`/tmp/saelens-venv/bin/python tests/trainer/sae/saelens_fixtures/make_fixtures.py`).

Each folder is a tiny SAE saved by SAELens's own `save_model` (cfg.json + sae_weights.safetensors)
and `reference.safetensors`: inputs `x` [N, d_in] and, from the SAE as SAELens's `load_from_disk`
reads it back, `feature_acts` = encode(x) and `sae_out` = forward(x). The test
(tests/trainer/sae/test_saelens_format.py) checks our loader against these without SAELens.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import sae_lens
import torch
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
D_IN, D_SAE, N_ROWS = 8, 16, 6
HOOK = "blocks.0.mlp.hook_post"

CASES: dict[str, tuple[type, type, dict[str, Any]]] = {
    "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
    "standard_no_b_dec_input": (
        sae_lens.StandardSAE,
        sae_lens.StandardSAEConfig,
        {"apply_b_dec_to_input": False},
    ),
    "standard_layer_norm": (
        sae_lens.StandardSAE,
        sae_lens.StandardSAEConfig,
        {"normalize_activations": "layer_norm"},
    ),
    "topk_rescaled": (
        sae_lens.TopKSAE,
        sae_lens.TopKSAEConfig,
        {"k": 3, "rescale_acts_by_decoder_norm": True},
    ),
    "topk_constant_norm": (
        sae_lens.TopKSAE,
        sae_lens.TopKSAEConfig,
        {"k": 3, "normalize_activations": "constant_norm_rescale"},
    ),
    "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
}


def make(name: str, sae_class: type, cfg_class: type, extra: dict[str, Any], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    cfg = cfg_class(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=HOOK, model_name="tiny"), **extra)
    sae = sae_class(cfg)
    with torch.no_grad():
        # Non-unit decoder rows and non-zero biases, so that every folded option matters.
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=generator))
        sae.W_dec.copy_(
            torch.randn(D_SAE, D_IN, generator=generator) * (0.5 + torch.rand(D_SAE, 1, generator=generator))
        )
        sae.b_enc.copy_(torch.randn(D_SAE, generator=generator) * 0.5)
        sae.b_dec.copy_(torch.randn(D_IN, generator=generator))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(D_SAE, generator=generator) * 2)
    folder = HERE / name
    shutil.rmtree(folder, ignore_errors=True)
    sae.save_model(folder)
    loaded = sae_lens.SAE.load_from_disk(folder)
    x = torch.randn(N_ROWS, D_IN, generator=generator) * 2 + 0.5
    with torch.no_grad():
        feature_acts = loaded.encode(x)
        sae_out = loaded(x)
    assert (feature_acts > 0).any(), f"{name}: no latent fires on the reference rows"
    save_file(
        {"x": x, "feature_acts": feature_acts.contiguous(), "sae_out": sae_out.contiguous()},
        str(folder / "reference.safetensors"),
        metadata={"sae_lens_version": sae_lens.__version__},
    )


if __name__ == "__main__":
    for seed, (name, (sae_class, cfg_class, extra)) in enumerate(CASES.items()):
        make(name, sae_class, cfg_class, extra, seed)
        print(f"wrote {HERE / name}")
