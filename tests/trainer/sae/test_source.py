"""The activation sources: harvest directories and users' files, shapes, resuming, data parallelism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from saedata import sae_cfg, write_harvest
from safetensors.numpy import save_file

from trainer.sae import ActivationShapeError, open_activation_source, train_sae


def test_width_mismatch_is_a_one_line_error(tmp_path: Path) -> None:
    np.save(tmp_path / "narrow.npy", np.zeros((100, 10), dtype=np.float16))
    with pytest.raises(ActivationShapeError, match="width 10 but the SAE's d_in is 32") as excinfo:
        open_activation_source(tmp_path / "narrow.npy", 32, 16)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(ActivationShapeError, match="width 10"):
        train_sae(sae_cfg(), tmp_path / "narrow.npy", tmp_path / "out", progress=False)
    save_file(
        {"activations": np.zeros((100, 10), dtype=np.float32), "other": np.zeros(3, dtype=np.float32)},
        str(tmp_path / "narrow.safetensors"),
    )
    with pytest.raises(ActivationShapeError, match="width 10"):
        open_activation_source(tmp_path / "narrow.safetensors", 32, 16)
    np.save(tmp_path / "flat.npy", np.zeros(100, dtype=np.float32))
    with pytest.raises(ActivationShapeError, match="expected \\[n_rows, 32\\]"):
        open_activation_source(tmp_path / "flat.npy", 32, 16)


def test_safetensors_file_source(tmp_path: Path) -> None:
    acts = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    save_file({"x": acts}, str(tmp_path / "acts.safetensors"))
    source = open_activation_source(tmp_path / "acts.safetensors", 8, 25)
    seen = torch.cat([next(source), next(source)])
    assert torch.equal(seen.sort(dim=0).values, torch.from_numpy(acts).sort(dim=0).values)  # a permutation


def test_harvest_directory_source_cycles_and_resumes(tmp_path: Path) -> None:
    all_rows = write_harvest(tmp_path / "acts", [30, 45, 25])
    source = open_activation_source(tmp_path / "acts", 8, 20, seed=5)
    assert source.n_rows == 100
    first_epoch = torch.cat([next(source) for _ in range(5)])  # exactly 100 rows
    assert first_epoch.dtype == torch.float32 and first_epoch.shape == (100, 8)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(first_epoch) == key(torch.from_numpy(all_rows.astype(np.float32)))
    for _ in range(3):
        next(source)
    saved = source.state_dict()
    expected = [next(source) for _ in range(7)]  # crosses into a third epoch, in a new shard order
    fresh = open_activation_source(tmp_path / "acts", 8, 20, seed=5)
    fresh.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(expected, [next(fresh) for _ in range(7)], strict=True))
    with pytest.raises(ActivationShapeError, match="width 8 but the SAE's d_in is 16"):
        open_activation_source(tmp_path / "acts", 16, 20)


def test_data_parallel_slices_tile_each_global_batch(tmp_path: Path) -> None:
    write_harvest(tmp_path / "acts", [30, 45, 25])
    full = open_activation_source(tmp_path / "acts", 8, 20, seed=5)
    halves = [open_activation_source(tmp_path / "acts", 8, 20, seed=5) for _ in range(2)]
    halves[0].local_rows, halves[1].local_rows = slice(0, 10), slice(10, 20)
    for _ in range(7):  # across shard boundaries and into the next epoch
        assert torch.equal(next(full), torch.cat([next(h) for h in halves]))
    assert halves[0].state_dict() == full.state_dict()  # positions are global: checkpoints agree
    assert torch.equal(halves[1].take_rows(30), full.take_rows(30))  # resampling reads all rows
