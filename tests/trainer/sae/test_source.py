"""The activation sources: harvest directories and users' files, shapes, resuming, data parallelism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from saedata import sae_cfg, write_harvest
from safetensors.numpy import save_file

from trainer.checkpoint import CheckpointError
from trainer.sae import ActivationShapeError, open_activation_source, train_sae


def test_width_mismatch_is_a_one_line_error(tmp_path: Path) -> None:
    np.save(tmp_path / "narrow.npy", np.zeros((100, 10), dtype=np.float16))
    with pytest.raises(ActivationShapeError, match="width 10 but the SAE's d_in is 32") as excinfo:
        open_activation_source(tmp_path / "narrow.npy", 32, 16)
    assert "\n" not in str(excinfo.value)
    save_file(
        {"activations": np.zeros((100, 10), dtype=np.float32), "other": np.zeros(3, dtype=np.float32)},
        str(tmp_path / "narrow.safetensors"),
    )
    with pytest.raises(ActivationShapeError, match="width 10"):
        open_activation_source(tmp_path / "narrow.safetensors", 32, 16)
    np.save(tmp_path / "flat.npy", np.zeros(100, dtype=np.float32))
    with pytest.raises(ActivationShapeError, match="expected \\[n_rows, d_in\\]"):
        open_activation_source(tmp_path / "flat.npy", 32, 16)


def test_the_width_comes_from_the_data(tmp_path: Path) -> None:
    """d_in is the file's width whatever the config says; resuming on other-width data is refused."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "wide.npy", rng.random((2048, 24), dtype=np.float32))
    result = train_sae(
        sae_cfg(d_in=512, n_tokens=256 * 4), tmp_path / "wide.npy", tmp_path / "out", progress=False
    )
    assert result.sae.cfg.d_in == 24 and result.sae.W_dec.shape == (192, 24)
    assert open_activation_source(tmp_path / "wide.npy", None, 16).d_in == 24
    np.save(tmp_path / "other.npy", rng.random((2048, 20), dtype=np.float32))
    weights = (tmp_path / "out" / "sae_weights.safetensors").read_bytes()
    with pytest.raises(
        CheckpointError, match="checkpoint.pt is of another SAE run \\(sae.d_in was 24, now 20\\)"
    ):
        train_sae(
            sae_cfg(n_tokens=256 * 8), tmp_path / "other.npy", tmp_path / "out", resume=True, progress=False
        )
    assert (tmp_path / "out" / "sae_weights.safetensors").read_bytes() == weights  # nothing overwritten


def test_bad_activation_files_are_one_line_errors(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).random((300, 8), dtype=np.float32)
    rows[[7, 200], 3] = [np.nan, np.inf]
    np.save(tmp_path / "nan.npy", rows)
    with pytest.raises(
        ActivationShapeError, match="nan.npy hold NaN or Inf in 2 of 300 rows \\(first: row 7\\)"
    ):
        open_activation_source(tmp_path / "nan.npy", None, 16)
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), dtype=np.float32))
    with pytest.raises(ActivationShapeError, match="empty.npy have no rows"):
        open_activation_source(tmp_path / "empty.npy", None, 16)
    np.save(tmp_path / "zeros.npy", np.zeros((300, 8), dtype=np.float32))
    with pytest.raises(ActivationShapeError, match="zeros.npy are all zero"):
        train_sae(sae_cfg(n_tokens=256), tmp_path / "zeros.npy", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "sae_weights.safetensors").exists()
    # A harvest shard that went bad after harvesting: refused at the batch that reads it.
    write_harvest(tmp_path / "harvest", [150, 150])
    np.save(tmp_path / "harvest" / "acts_00001.npy", rows[150:].astype(np.float16))
    source = open_activation_source(tmp_path / "harvest", None, 100)
    with pytest.raises(ActivationShapeError, match="hold NaN or Inf"):
        for _ in range(4):
            next(source)


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
