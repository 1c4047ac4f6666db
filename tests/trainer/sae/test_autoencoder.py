"""The SAE module: init, save/load in SAELens's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from saedata import perturbed, tiny_cfg
from safetensors.torch import load_file

from trainer.sae import SparseAutoencoder


def test_init_is_anthropics_small_tied_transpose() -> None:
    sae = SparseAutoencoder(tiny_cfg(init_norm=0.1))
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(48), atol=1e-6)  # unit-norm variant
    assert torch.allclose(sae.W_enc, 0.1 * sae.W_dec.T)
    assert torch.equal(sae.b_enc, torch.zeros(48)) and torch.equal(sae.b_dec, torch.zeros(16))
    assert sae.W_enc.shape == (16, 48) and sae.W_dec.shape == (48, 16)
    # l1_decnorm has no norm constraint: its decoder rows start small and the encoder is their transpose.
    free = SparseAutoencoder(tiny_cfg(variant="l1_decnorm", init_norm=0.1))
    assert torch.allclose(free.W_dec.norm(dim=1), torch.full((48,), 0.1), atol=1e-6)
    assert torch.equal(free.W_enc, free.W_dec.T)


@pytest.mark.parametrize("variant", ["paper", "l1_decnorm", "topk", "batchtopk", "jumprelu"])
def test_folding_the_input_scale_reads_raw_inputs(variant: str) -> None:
    """An SAE trained on x · s, folded, gives on x its reconstruction / s and its activations / s."""
    sae = perturbed(SparseAutoencoder(tiny_cfg(variant=variant))).eval()
    x = torch.randn(64, 16).abs()
    scale = 3.7
    x_hat_scaled, f_scaled = sae(x * scale)
    sae.fold_input_scale(scale)
    x_hat, f = sae(x)
    assert torch.allclose(x_hat, x_hat_scaled / scale, atol=1e-5)
    assert torch.allclose(f, f_scaled / scale, atol=1e-5)


def test_init_b_dec_geometric_median_resists_outliers() -> None:
    sample = torch.randn(500, 16) * 0.1 + 1.0
    sample[:20] += 1000.0  # a few huge outliers drag the mean, not the median
    sae = SparseAutoencoder(tiny_cfg())
    sae.init_b_dec(sample)
    assert (sae.b_dec - 1.0).abs().max() < 0.1
    sae.init_b_dec(sample, method="mean")
    assert sae.b_dec.min() > 30.0


@pytest.mark.parametrize("variant", ["paper", "l1_decnorm", "topk", "batchtopk", "jumprelu"])
def test_save_load_roundtrip(tmp_path: Path, variant: str) -> None:
    sae = perturbed(SparseAutoencoder(tiny_cfg(variant=variant))).eval()
    sae.save(tmp_path, context_size=64)
    loaded = SparseAutoencoder.load(tmp_path)
    x = torch.randn(32, 16).abs()
    x_hat, f = sae(x)
    x_hat2, f2 = loaded(x)
    assert torch.equal(f, f2) and torch.equal(x_hat, x_hat2)
    assert loaded.cfg == sae.cfg and not loaded.training

    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    expected_keys = {"W_enc", "W_dec", "b_enc", "b_dec"}
    if variant in ("jumprelu", "batchtopk"):
        expected_keys.add("threshold")
        assert tensors["threshold"].shape == (48,)
        assert torch.allclose(tensors["threshold"], loaded.threshold)  # type: ignore[arg-type]
    assert set(tensors) == expected_keys
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    architecture = {"paper": "standard", "l1_decnorm": "standard", "topk": "topk"}.get(variant, "jumprelu")
    assert cfg["architecture"] == architecture
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["device"]) == (16, 48, "float32", "cpu")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["hook_name"] == cfg["meta"]["hook_name"] == "blocks.0.mlp.hook_post"
    assert cfg["meta"]["context_size"] == 64
    assert cfg["monosemantic"]["variant"] == variant
    if variant == "topk":
        assert cfg["k"] == 4


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cfg.json is missing"):
        SparseAutoencoder.load(tmp_path)
    sae = SparseAutoencoder(tiny_cfg())
    sae.save(tmp_path)
    weights = tmp_path / "sae_weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated") as excinfo:
        SparseAutoencoder.load(tmp_path)
    assert "\n" not in str(excinfo.value)

    weights.write_bytes(good)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["monosemantic"]["d_sae"] = 64
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="W_enc has shape"):
        SparseAutoencoder.load(tmp_path)


def test_loads_a_saelens_config_without_our_key(tmp_path: Path) -> None:
    sae = perturbed(SparseAutoencoder(tiny_cfg(variant="topk"))).eval()
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["monosemantic"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = SparseAutoencoder.load(tmp_path)
    assert loaded.cfg.variant == "topk" and loaded.cfg.k == 4
    x = torch.randn(8, 16)
    assert torch.equal(loaded(x)[0], sae(x)[0])
