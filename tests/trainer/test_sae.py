"""The SAE module: init, the variants' activations, the JumpReLU gradients, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import SAEConfig
from trainer.sae import SparseAutoencoder, StepFunction, batch_topk_threshold


def tiny_cfg(**overrides: object) -> SAEConfig:
    values: dict = {"d_in": 16, "d_sae": 48, "k": 4, "batch_size": 32, "n_tokens": 32 * 10, "seed": 3}
    values.update(overrides)
    return SAEConfig(**values)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def perturbed(sae: SparseAutoencoder) -> SparseAutoencoder:
    """Move every parameter off its init so a roundtrip that drops one shows."""
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if sae.cfg.variant == "batchtopk":
            sae.batchtopk_threshold.fill_(0.37)
    return sae


def test_init_is_anthropics_tied_unit_norm() -> None:
    sae = SparseAutoencoder(tiny_cfg())
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(48), atol=1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert torch.equal(sae.b_enc, torch.zeros(48)) and torch.equal(sae.b_dec, torch.zeros(16))
    assert sae.W_enc.shape == (16, 48) and sae.W_dec.shape == (48, 16)


def test_init_b_dec_geometric_median_resists_outliers() -> None:
    sample = torch.randn(500, 16) * 0.1 + 1.0
    sample[:20] += 1000.0  # a few huge outliers drag the mean, not the median
    sae = SparseAutoencoder(tiny_cfg())
    sae.init_b_dec(sample)
    assert (sae.b_dec - 1.0).abs().max() < 0.1
    sae.init_b_dec(sample, method="mean")
    assert sae.b_dec.min() > 30.0


def test_paper_encode_is_relu_of_centred_input() -> None:
    sae = perturbed(SparseAutoencoder(tiny_cfg()))
    x = torch.randn(8, 16)
    expected = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    assert torch.allclose(sae.encode(x), expected, atol=1e-5)
    x_hat, f = sae(x)
    assert torch.allclose(x_hat, f @ sae.W_dec + sae.b_dec, atol=1e-5)


def test_topk_keeps_k_per_row() -> None:
    sae = perturbed(SparseAutoencoder(tiny_cfg(variant="topk")))
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: exactly k survive
    f = sae.encode(torch.randn(64, 16))
    assert torch.equal((f > 0).sum(1), torch.full((64,), 4))


def test_batchtopk_keeps_k_times_n_at_train_and_uses_threshold_at_inference() -> None:
    sae = perturbed(SparseAutoencoder(tiny_cfg(variant="batchtopk"))).train()
    with torch.no_grad():
        sae.b_enc.fill_(5.0)
        sae.batchtopk_threshold.zero_()
    x = torch.randn(64, 16)
    f = sae.encode(x)
    assert int((f > 0).sum()) == 4 * 64
    assert float(sae.batchtopk_threshold) > 0  # tracked from the first batch
    sae.eval()
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), pre * (pre > sae.batchtopk_threshold))


@pytest.mark.parametrize("rows_all_high", [False, True])
def test_batch_topk_threshold_is_exact(rows_all_high: bool) -> None:
    pre = torch.randn(50, 200)
    if rows_all_high:  # one row holds far more than its 4k candidates of the global top: the fallback
        pre[7] += 100.0
    k = 3
    brute = torch.topk(pre.flatten(), k * 50).values.min()
    assert float(batch_topk_threshold(pre, k)) == float(brute)


def test_jumprelu_forward_and_straight_through_threshold_gradient() -> None:
    cfg = tiny_cfg(variant="jumprelu", jumprelu_init_threshold=0.5, jumprelu_bandwidth=0.2)
    sae = SparseAutoencoder(cfg)
    threshold = sae.threshold
    assert threshold is not None and torch.allclose(threshold, torch.full((48,), 0.5))
    pre = torch.tensor([[0.3, 0.45, 0.55, 0.9] + [0.0] * 44])
    f = sae.activate(pre)
    assert f[0, :4].tolist() == pytest.approx([0.0, 0.0, 0.55, 0.9])
    # L0 gradient reaches θ only where |pre − θ| < ε/2 (0.45 and 0.55), as −1/ε each (times dθ/dlogθ = θ).
    StepFunction.apply(pre, sae.log_threshold.exp(), cfg.jumprelu_bandwidth).sum().backward()
    grad = sae.log_threshold.grad
    assert grad is not None
    assert grad[1].item() == pytest.approx(-0.5 / 0.2) and grad[2].item() == pytest.approx(-0.5 / 0.2)
    assert grad[0].item() == 0.0 and grad[3].item() == 0.0


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
