"""Our loader against SAELens's own saved SAEs: the folders in saelens_fixtures/ were written by
SAELens 6 (make_fixtures.py regenerates them), with SAELens's encode and forward on a few rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import SAEConfig
from trainer.sae import SparseAutoencoder
from trainer.sae.autoencoder import NormalizedInputSAE, load_sae
from trainer.sae.saelens_format import SAEFormatError, check_sae_fits

FIXTURES = Path(__file__).parent / "saelens_fixtures"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "cfg.json").exists())


def test_every_architecture_and_option_has_a_fixture() -> None:
    assert CASES == [
        "jumprelu",
        "standard",
        "standard_layer_norm",
        "standard_no_b_dec_input",
        "topk_constant_norm",
        "topk_rescaled",
    ]


@pytest.mark.parametrize("case", CASES)
def test_matches_saelens_encode_and_reconstruction(case: str) -> None:
    reference = load_file(str(FIXTURES / case / "reference.safetensors"))
    sae = SparseAutoencoder.load(FIXTURES / case)
    assert sae.hook_name == "blocks.0.mlp.hook_post" and not sae.training
    with torch.no_grad():
        f = sae.encode(reference["x"])
        x_hat, f_forward = sae(reference["x"])
    assert (reference["feature_acts"] > 0).any()
    torch.testing.assert_close(f, reference["feature_acts"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_forward, reference["feature_acts"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_hat, reference["sae_out"], atol=1e-5, rtol=1e-5)
    assert isinstance(sae, NormalizedInputSAE) == ("norm" in case)


def test_options_would_change_the_output_if_ignored(tmp_path: Path) -> None:
    """Each fixture's option matters: reading the same weights as a plain SAE gives other numbers."""
    for case, key, plain in [
        ("standard_no_b_dec_input", "apply_b_dec_to_input", True),
        ("standard_layer_norm", "normalize_activations", "none"),
        ("topk_rescaled", "rescale_acts_by_decoder_norm", False),
    ]:
        folder = tmp_path / case
        shutil.copytree(FIXTURES / case, folder)
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg[key] = plain
        (folder / "cfg.json").write_text(json.dumps(cfg))
        reference = load_file(str(folder / "reference.safetensors"))
        with torch.no_grad():
            x_hat = load_sae(folder)(reference["x"])[0]
        assert not torch.allclose(x_hat, reference["sae_out"], atol=1e-3), case


def _edited(tmp_path: Path, case: str, **changes: object) -> Path:
    folder = tmp_path / f"{case}-edited"
    shutil.copytree(FIXTURES / case, folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    ("case", "changes", "message"),
    [
        ("topk_rescaled", {"k": None}, "a topk SAE needs k"),
        ("standard", {"normalize_activations": "expected_average_only_in"}, "scaling factor"),
        ("standard", {"normalize_activations": "covariance_whitening"}, "not supported"),
        ("standard", {"architecture": "gated"}, "architecture 'gated' is not supported"),
        ("standard", {"activation_fn": "tanh-relu"}, "activation function 'tanh-relu'"),
        ("standard", {"d_in": 9}, "W_enc has shape"),
    ],
)
def test_what_cannot_be_reproduced_is_refused(
    tmp_path: Path, case: str, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as excinfo:
        load_sae(_edited(tmp_path, case, **changes))
    assert "\n" not in str(excinfo.value)


def test_a_folder_that_is_not_an_sae(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_sae(tmp_path / "missing")
    (tmp_path / "cfg.json").write_text("{not json")
    (tmp_path / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_sae(tmp_path)


def test_check_sae_fits_names_the_mismatch() -> None:
    sae = load_sae(FIXTURES / "standard")
    check_sae_fits(sae, 8, "blocks.0.mlp.hook_post")
    with pytest.raises(SAEFormatError, match="reads 8-dimensional inputs but the model gives 32"):
        check_sae_fits(sae, 32, "blocks.0.mlp.hook_post")
    with pytest.raises(SAEFormatError, match="trained on hook 'blocks.0.mlp.hook_post'"):
        check_sae_fits(sae, 8, "blocks.3.hook_resid_post")


def test_our_own_sae_round_trips_with_its_hook(tmp_path: Path) -> None:
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, variant="topk", k=2, batch_size=4, n_tokens=4))
    sae.save(tmp_path)
    loaded = load_sae(tmp_path)
    assert loaded.cfg == sae.cfg and loaded.hook_name == "blocks.0.mlp.hook_post"
