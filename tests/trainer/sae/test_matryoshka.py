"""Matryoshka BatchTopK: its nested prefixes each reconstruct, and it absorbs less of a planted
child into its parent's latent than BatchTopK (trainer.sae.planted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from saedata import open_activation_source_from, perturbed, sae_cfg, tiny_cfg

from trainer.config import ConfigError
from trainer.sae import SparseAutoencoder, init_train_state, train_sae
from trainer.sae.planted import (
    absorption,
    absorption_cfg,
    hierarchy_source,
    planted_hierarchy,
    prefix_fvu,
)
from trainer.sae.variants.matryoshka_batchtopk import prefix_widths


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SparseAutoencoder]:
    """BatchTopK and Matryoshka BatchTopK at their defaults on the planted parent/child set."""
    hierarchy = planted_hierarchy(20_000)
    saes = {}
    for variant in ("batchtopk", "matryoshka_batchtopk"):
        cfg = absorption_cfg(variant, n_steps=400)
        out = tmp_path_factory.mktemp(variant)
        saes[variant] = train_sae(cfg, hierarchy_source(hierarchy, cfg.batch_size), out, progress=False).sae
    return saes


def test_matryoshka_absorbs_less_than_batchtopk(trained: dict[str, SparseAutoencoder]) -> None:
    held_out = planted_hierarchy(10_000, seed=1)
    plain = absorption(trained["batchtopk"], held_out)
    nested = absorption(trained["matryoshka_batchtopk"], held_out)
    assert plain.absorption > 0.3, plain  # the set does provoke absorption (0.63 here)
    assert nested.absorption < 0.6 * plain.absorption, (nested, plain)
    assert nested.parent_recall > 0.9 and nested.parent_cosine > 0.8, nested


def test_each_nested_prefix_reconstructs_better_than_chance(trained: dict[str, SparseAutoencoder]) -> None:
    sae = trained["matryoshka_batchtopk"]
    rows = torch.from_numpy(planted_hierarchy(10_000, seed=1).rows)
    widths = prefix_widths(sae.cfg)
    assert widths == (8, 16, 32, 64)
    fvu = prefix_fvu(sae, rows, widths)
    assert all(value < 0.75 for value in fvu), fvu  # the mean predictor's is 1
    assert fvu == sorted(fvu, reverse=True), fvu  # each prefix adds to the one before
    # BatchTopK's first eighth alone does not: it had no reason to.
    assert prefix_fvu(trained["batchtopk"], rows, widths)[0] > fvu[0] + 0.2


def test_one_prefix_is_batchtopk() -> None:
    """With the whole dictionary as its only prefix, the loss is BatchTopK's."""
    rows = np.random.default_rng(0).random((256, 16))
    losses = []
    for variant, widths in (("batchtopk", None), ("matryoshka_batchtopk", (48,))):
        cfg = sae_cfg(d_in=16, d_sae=48, variant=variant, k=4, dtype="fp32", matryoshka_widths=widths)
        state = init_train_state(cfg, open_activation_source_from(rows))
        state.steps_since_fired[:10] = 10_000  # AuxK on
        x = torch.from_numpy(rows[:64]).float()
        losses.append(state.sae.variant.reference_loss(state, x, 1)[0].detach())
    assert float(losses[0]) == pytest.approx(float(losses[1]), rel=1e-6)


def test_widths_are_checked() -> None:
    assert prefix_widths(tiny_cfg(variant="matryoshka_batchtopk", matryoshka_widths=(4, 48))) == (4, 48)
    for widths in ((8, 4, 48), (0, 48), (4, 24)):
        with pytest.raises(ConfigError, match="matryoshka_widths"):
            tiny_cfg(variant="matryoshka_batchtopk", matryoshka_widths=widths)


def test_saves_as_a_saelens_jumprelu_sae_and_loads_back(tmp_path: Path) -> None:
    sae = perturbed(SparseAutoencoder(tiny_cfg(variant="matryoshka_batchtopk", matryoshka_widths=(6, 48))))
    with torch.no_grad():
        sae.batchtopk_threshold.fill_(0.37)
    sae.eval().save(tmp_path)
    loaded = SparseAutoencoder.load(tmp_path)
    x = torch.randn(32, 16).abs()
    assert torch.equal(sae(x)[0], loaded(x)[0]) and loaded.cfg == sae.cfg
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"  # as SAELens saves its Matryoshka BatchTopK SAEs
