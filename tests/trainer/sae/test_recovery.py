"""Every variant, with its defaults, finds directions planted in superposition: through the command
line, on activations as hard as users bring (saedata.planted_superposition), with only the budget,
the dictionary size and the planted L0 (as --k or --target-l0) given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from saedata import mean_max_cosine, overcomplete_superposition, planted_superposition

from monosemantic.cli import main
from trainer.sae import SparseAutoencoder

D_SAE = 512  # 2 × the planted directions
TOKENS = 1_200_000  # ~1,200 steps of 1,024 rows


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, float, torch.Tensor]:
    rows, directions, planted_l0 = planted_superposition(120_000)
    path = tmp_path_factory.mktemp("planted") / "acts.npy"
    np.save(path, rows[:100_000])
    return path, directions, planted_l0, torch.from_numpy(rows[100_000:])  # the last 20k held out


@pytest.mark.parametrize("variant", ["paper", "l1_decnorm", "jumprelu", "topk", "batchtopk"])
def test_every_variant_recovers_planted_directions(tmp_path: Path, planted, variant: str) -> None:
    path, directions, planted_l0, held_out = planted
    sparsity = ["--k", "3"] if "topk" in variant else ["--target-l0", f"{planted_l0:.2f}"]
    argv = ["train-sae", "--preset", "tiny", "--out-dir", str(tmp_path), "--activations", str(path)]
    argv += ["--variant", variant, "--d-sae", str(D_SAE), "--sae-tokens", str(TOKENS)]
    argv += ["--set", "sae.batch_size=1024", "--set", "sae.checkpoint_interval=400", *sparsity]
    assert main(argv) == 0
    sae = SparseAutoencoder.load(tmp_path / f"sae_{variant}_{D_SAE}")
    assert sae.cfg.d_in == 64  # from the file: nobody said so
    assert mean_max_cosine(directions, sae.W_dec) >= 0.9
    with torch.no_grad():
        x_hat, f = sae(held_out)
    held_out_l0 = float((f > 0).float().sum(1).mean())
    fvu = float((x_hat - held_out).pow(2).sum() / (held_out - held_out.mean(0)).pow(2).sum())
    assert fvu < 0.9
    if "topk" not in variant:  # --target-l0 lands within ±15% on rows it never saw
        assert abs(held_out_l0 - planted_l0) <= 0.15 * planted_l0, held_out_l0
        assert sae.training_record["target_l0"] == pytest.approx(planted_l0, abs=0.01)
        assert sae.training_record["sparsity_coefficient"] > 0


def test_an_untrained_sae_is_far_from_the_planted_directions(planted) -> None:
    """So that the 0.9 above means something."""
    _, directions, _, _ = planted
    from trainer.config import SAEConfig

    for variant in ("paper", "topk"):
        sae = SparseAutoencoder(SAEConfig(d_in=64, d_sae=D_SAE, variant=variant))  # type: ignore[arg-type]
        assert mean_max_cosine(directions, sae.W_dec) < 0.6


# ---------------------------------------------------------------------------- overcomplete


# Mean max cosine each variant's defaults reach on saedata.overcomplete_superposition (128 directions
# in 16 dimensions, in groups of 4 that fire together; 1M tokens), measured (issue 22): topk 0.951;
# batchtopk 0.910-0.925 over seeds 0-2 (0.67 before it began as topk); paper 0.923-0.928 over seeds
# 0-1 (0.891 at its former lr 3e-3). Not yet recovered, so bounded where they stand, to catch a
# regression: l1_decnorm 0.864 (L1 merges co-occurring directions, as paper's did) and jumprelu 0.705
# (a fifth to a quarter of its latents dead at the planted L0).
OVERCOMPLETE_BOUNDS = {"topk": 0.9, "batchtopk": 0.88, "paper": 0.9, "l1_decnorm": 0.83, "jumprelu": 0.65}


@pytest.fixture(scope="module")
def overcomplete(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, float]:
    rows, directions, planted_l0 = overcomplete_superposition(120_000)
    path = tmp_path_factory.mktemp("overcomplete") / "acts.npy"
    np.save(path, rows[:100_000])  # the rows the bounds were measured on
    return path, directions, planted_l0


@pytest.mark.parametrize("variant", ["paper", "l1_decnorm", "jumprelu", "topk", "batchtopk"])
def test_every_variant_recovers_an_overcomplete_set(tmp_path: Path, overcomplete, variant: str) -> None:
    """8 × more planted directions than dimensions, co-occurring in groups: the case where the batch
    allocation and the L1 penalty lose directions that TopK finds (issue 22)."""
    path, directions, planted_l0 = overcomplete
    sparsity = ["--k", "2"] if "topk" in variant else ["--target-l0", f"{planted_l0:.2f}"]
    argv = ["train-sae", "--preset", "tiny", "--out-dir", str(tmp_path), "--activations", str(path)]
    argv += ["--variant", variant, "--d-sae", "256", "--sae-tokens", "1000000", *sparsity]
    argv += ["--set", "sae.batch_size=1024", "--set", "sae.checkpoint_interval=400"]
    assert main(argv) == 0
    sae = SparseAutoencoder.load(tmp_path / f"sae_{variant}_256")
    assert mean_max_cosine(directions, sae.W_dec) >= OVERCOMPLETE_BOUNDS[variant]
