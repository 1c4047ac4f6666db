"""Training: feature recovery on synthetic superposition, every variant, resampling, the activation
sources, and checkpoint / kill -9 / resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from trainer.checkpoint import CheckpointError
from trainer.config import SAEConfig
from trainer.train_sae import (
    ActivationShapeError,
    init_train_state,
    open_activation_source,
    resample_dead_latents,
    train_sae,
    train_step,
)

REPO = Path(__file__).resolve().parents[2]


def sae_cfg(**overrides: object) -> SAEConfig:
    values: dict = {
        "d_in": 32,
        "d_sae": 192,
        "batch_size": 256,
        "n_tokens": 256 * 40,
        "k": 3,
        "l1_coefficient": 0.3,
        "lr": 1e-2,
        "checkpoint_interval": 10,
        "seed": 0,
    }
    values.update(overrides)
    return SAEConfig(**values)


def superposition(
    n_rows: int, d_in: int = 32, n_features: int = 96, p: float = 0.03, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse non-negative codes over n_features random unit directions in d_in dimensions."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_features, d_in))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    codes = (rng.random((n_rows, n_features)) < p) * rng.uniform(0.5, 1.5, (n_rows, n_features))
    return (codes @ directions).astype(np.float32), directions


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    acts, directions = superposition(40_000)
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, acts)
    return path, directions


def mean_max_cosine(true_directions: np.ndarray, W_dec: torch.Tensor) -> float:
    learned = W_dec.detach().numpy()
    learned = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    return float((true_directions @ learned.T).max(axis=1).mean())


# ---------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("variant", ["paper", "topk"])
def test_recovers_true_features_from_superposition(tmp_path: Path, data_file, variant: str) -> None:
    path, directions = data_file
    cfg = sae_cfg(variant=variant, n_tokens=256 * 800, checkpoint_interval=10_000)
    result = train_sae(cfg, path, tmp_path, progress=False)
    assert mean_max_cosine(directions, result.sae.W_dec) >= 0.9
    # An untrained SAE is far from it, so the bound means something.
    assert (
        mean_max_cosine(directions, init_train_state(cfg, open_activation_source(path, 32, 256)).sae.W_dec)
        < 0.6
    )
    if variant == "paper":  # decoder rows kept at unit norm throughout
        assert torch.allclose(result.sae.W_dec.norm(dim=1), torch.ones(192), atol=1e-5)
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert log["rows"][-1]["step"] == 800 and log["rows"][0]["mse"] > log["rows"][-1]["mse"]
    assert (tmp_path / "sae_weights.safetensors").exists() and (tmp_path / "cfg.json").exists()


@pytest.mark.parametrize("variant", ["paper", "l1_decnorm", "topk", "batchtopk", "jumprelu"])
def test_every_variant_trains_without_nan(data_file, variant: str) -> None:
    path, _ = data_file
    cfg = sae_cfg(variant=variant, jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.05)
    source = open_activation_source(path, 32, 256)
    state = init_train_state(cfg, source)
    stats = [train_step(state, next(source)) for _ in range(25)]
    assert all(np.isfinite([s.loss, s.mse, s.sparsity_loss, s.l0]).all() for s in stats)
    assert all(torch.isfinite(p).all() for p in state.sae.parameters())
    assert stats[-1].mse < stats[0].mse
    l0 = stats[-1].l0
    if variant == "topk":
        assert 0 < l0 <= 3 and all(s.l0 <= 3 for s in stats)
    elif variant == "batchtopk":
        # k·N active over the batch, so k per input on average; bf16 ties at the threshold add a few.
        assert all(3 <= s.l0 < 3.15 for s in stats)
        assert float(state.sae.batchtopk_threshold) > 0
    else:  # the sparsity penalty pulls L0 well below the d_sae/2 of a random init
        assert l0 < stats[0].l0 and l0 < 96
    norms = state.sae.W_dec.norm(dim=1)
    if variant == "l1_decnorm":
        assert not torch.allclose(norms, torch.ones(192), atol=1e-3)
    else:
        assert torch.allclose(norms, torch.ones(192), atol=1e-5)


# ---------------------------------------------------------------------------- resampling


def test_resampling_reinitialises_dead_latents_and_their_adam_state(data_file) -> None:
    path, _ = data_file
    acts = np.load(path)
    cfg = sae_cfg(n_tokens=256 * 100)
    source = open_activation_source(path, 32, 256)
    state = init_train_state(cfg, source)
    dead = torch.arange(0, 192, 4)  # 48 latents that can never fire
    with torch.no_grad():
        state.sae.b_enc[dead] = -1e4
    for _ in range(15):
        train_step(state, next(source))
    state.sae.b_enc.data[dead] = -1e4  # Adam moved them a little; keep them dead
    state.steps_since_fired[:] = torch.where(state.steps_since_fired > 0, 10_000, 0)
    assert torch.equal(state.dead_mask.nonzero().squeeze(1), dead)
    alive = torch.ones(192, dtype=torch.bool)
    alive[dead] = False
    alive_before = {name: getattr(state.sae, name).detach().clone() for name in ("W_enc", "W_dec", "b_enc")}
    mean_alive_norm = float(state.sae.W_enc.detach()[:, alive].norm(dim=0).mean())
    adam_W_enc = state.optimizer.state[state.sae.W_enc]
    assert adam_W_enc["exp_avg"][:, alive].abs().sum() > 0

    result = resample_dead_latents(state)

    sae = state.sae
    assert result.n_dead == 48 and state.resamples == [{"step": 15, "n_dead": 48}]
    assert torch.equal(sae.b_enc[dead], torch.zeros(48))
    assert torch.allclose(sae.W_dec[dead].norm(dim=1), torch.ones(48), atol=1e-5)
    # Each new dictionary vector is the direction of a real input, centred by b_dec.
    centred = torch.from_numpy(acts) - sae.b_dec.detach()
    centred = centred / centred.norm(dim=1, keepdim=True)
    assert (sae.W_dec[dead].detach() @ centred.T).max(dim=1).values.min() > 0.9999
    expected_enc = sae.W_dec[dead].T * 0.2 * mean_alive_norm
    assert torch.allclose(sae.W_enc[:, dead], expected_enc, atol=1e-6)
    for name, before in alive_before.items():
        after = getattr(sae, name)
        kept = after[alive] if name != "W_enc" else after[:, alive]
        was = before[alive] if name != "W_enc" else before[:, alive]
        assert torch.equal(kept, was)
    for param, index in ((sae.W_enc, (slice(None), dead)), (sae.W_dec, (dead,)), (sae.b_enc, (dead,))):
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(
                state.optimizer.state[param][moment][index],
                torch.zeros_like(state.optimizer.state[param][moment][index]),
            )
    assert adam_W_enc["exp_avg"][:, alive].abs().sum() > 0  # the alive latents' moments are kept
    assert int(state.dead_mask.sum()) == 0
    # The resampled latents now fire.
    assert (sae.encode(torch.from_numpy(acts[:4096]))[:, dead] > 0).any(dim=0).float().mean() > 0.5


def test_training_resamples_at_the_configured_fractions(tmp_path: Path, data_file) -> None:
    path, _ = data_file
    cfg = sae_cfg(
        n_tokens=256 * 40, resample_fractions=(0.5, 0.8), dead_window_fraction=0.1, l1_coefficient=10.0
    )  # so strong that latents die
    result = train_sae(cfg, path, tmp_path, progress=False)
    assert [r["step"] for r in result.resamples] == [20, 32]
    assert result.resamples[1]["n_dead"] > 0
    dead_before = next(row["dead"] for row in result.log if row["step"] == 31)
    assert dead_before > 0 and next(row["dead"] for row in result.log if row["step"] == 32) == 0


# ---------------------------------------------------------------------------- activation sources


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


def write_harvest(directory: Path, shard_rows: list[int], d_in: int = 8) -> np.ndarray:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    shards, names = [], []
    for i, rows in enumerate(shard_rows):
        acts = rng.standard_normal((rows, d_in)).astype(np.float16)
        np.save(directory / f"acts_{i:05d}.npy", acts)
        np.save(directory / f"doc_pos_{i:05d}.npy", np.zeros((rows, 2), dtype=np.int64))
        shards.append(acts)
        names.append(f"acts_{i:05d}.npy")
    manifest = {"d_in": d_in, "n_rows": sum(shard_rows), "shards": names}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return np.concatenate(shards)


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


# ---------------------------------------------------------------------------- checkpoints


def weights(sae: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from trainer.config import SAEConfig
from trainer.train_sae import train_sae
cfg = SAEConfig(**{cfg!r})
def die(state, stats):
    if state.step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a real kill -9
train_sae(cfg, Path({data!r}), Path({out!r}), progress=False, on_step=die)
"""


@pytest.mark.parametrize("variant", ["paper", "topk"])
def test_kill_minus_nine_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, data_file, variant: str
) -> None:
    path, _ = data_file
    # 60 steps, checkpoints every 10, resampling at step 36 with a 6-step dead window: the kill at
    # step 37 loses 7 steps and a resampling, which the resumed run must redo identically.
    values = {
        "d_in": 32,
        "d_sae": 192,
        "batch_size": 256,
        "n_tokens": 256 * 60,
        "k": 3,
        "variant": variant,
        "l1_coefficient": 10.0,
        "lr": 1e-2,
        "checkpoint_interval": 10,
        "resample_fractions": (0.6,),
        "dead_window_fraction": 0.1,
        "seed": 7,
    }
    cfg = SAEConfig(**values)
    reference = train_sae(cfg, path, tmp_path / "reference", progress=False)

    out = tmp_path / "killed"
    script = KILLED_RUN.format(cfg=values, kill_at=37, data=str(path), out=str(out))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 30
    assert not (out / "sae_weights.safetensors").exists()

    resumed = train_sae(cfg, path, out, resume=True, progress=False)
    ref_weights, res_weights = weights(reference.sae), weights(resumed.sae)
    assert ref_weights.keys() == res_weights.keys()
    for name in ref_weights:
        assert torch.equal(ref_weights[name], res_weights[name]), name
    assert resumed.log == reference.log and resumed.resamples == reference.resamples
    if variant == "paper":
        assert reference.resamples[0]["step"] == 36 and reference.resamples[0]["n_dead"] > 0


def test_same_seed_same_result_and_other_seed_differs(tmp_path: Path, data_file) -> None:
    path, _ = data_file
    runs = [
        train_sae(sae_cfg(seed=seed, n_tokens=256 * 5), path, tmp_path / str(i), progress=False)
        for i, seed in enumerate((1, 1, 2))
    ]
    assert torch.equal(runs[0].sae.W_dec, runs[1].sae.W_dec)
    assert not torch.equal(runs[0].sae.W_dec, runs[2].sae.W_dec)


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path: Path, data_file) -> None:
    path, _ = data_file
    cfg = sae_cfg(n_tokens=256 * 10, checkpoint_interval=5)
    train_sae(cfg, path, tmp_path, progress=False)
    checkpoint = tmp_path / "checkpoint.pt"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[: len(good) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as excinfo:
        train_sae(cfg, path, tmp_path, resume=True, progress=False)
    assert "delete it" in str(excinfo.value)
    checkpoint.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train_sae(cfg, path, tmp_path, resume=True, progress=False)
    checkpoint.write_bytes(good)
    with pytest.raises(CheckpointError, match="another SAE run \\(sae.d_sae") as excinfo:
        train_sae(sae_cfg(n_tokens=256 * 10, d_sae=96), path, tmp_path, resume=True, progress=False)
    assert "\n" not in str(excinfo.value)
    # A finished run resumes to the same weights without training further.
    done = train_sae(cfg, path, tmp_path, resume=True, progress=False)
    assert done.final is None and done.n_steps == 10


@pytest.mark.parametrize("sparse_below", [0.0, 1.0])  # the dense and the sparse backward
def test_fused_paper_loss_matches_autograd(sparse_below: float) -> None:
    from trainer.sae import SparseAutoencoder
    from trainer.train_sae import PaperLossFunction

    torch.manual_seed(0)
    sae = SparseAutoencoder(sae_cfg(d_in=16, d_sae=48))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(64, 16).relu()
    loss, _, _, _ = PaperLossFunction.apply(
        x, sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, 0.3, torch.float32, sparse_below
    )
    (2 * loss).backward()
    fused = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    x_hat, f = sae(x)
    reference = (x_hat - x).pow(2).sum(-1).mean() + 0.3 * f.sum(-1).mean()
    (2 * reference).backward()
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-6)
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, fused[name], rtol=1e-5, atol=1e-5), name


@pytest.mark.parametrize("n_dead", [0, 40])
def test_sparse_topk_loss_matches_autograd(n_dead: int) -> None:
    """The hand-written sparse backward of TopK (+ AuxK when latents are dead) against autograd
    through the dense reference path, in fp32."""
    from trainer.train_sae import TopKLossFunction, variant_loss

    cfg = sae_cfg(d_in=16, d_sae=48, variant="topk", k=4, aux_k=8, aux_coefficient=0.5, dtype="fp32")
    state = init_train_state(cfg, open_activation_source_from(np.random.default_rng(0).random((256, 16))))
    sae = state.sae
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state.steps_since_fired[:n_dead] = 10_000  # the first n_dead latents count as dead
    x = torch.randn(64, 16).relu()
    dead_idx = state.dead_mask.nonzero().squeeze(1)
    loss, mse, auxk, indices, values = TopKLossFunction.apply(
        x, sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, 4, dead_idx, 8, 0.5, torch.float32
    )
    (2 * loss).backward()
    fast = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    ref_loss, ref_mse, ref_auxk, f = variant_loss(state, x, step=1)
    (2 * ref_loss).backward()
    assert (float(auxk) > 0) == (n_dead > 0)
    for ours, ref in ((loss, ref_loss), (mse, ref_mse), (auxk, ref_auxk)):
        assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-7)
    dense = torch.zeros_like(f).scatter_(1, indices, values)
    assert torch.allclose(dense, f.detach(), atol=1e-6)
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, fast[name], rtol=1e-4, atol=1e-5), name


def open_activation_source_from(rows: np.ndarray, batch_size: int = 64):
    from trainer.train_sae import ActivationSource

    rows = rows.astype(np.float32)
    return ActivationSource([lambda: rows], [len(rows)], rows.shape[1], batch_size, 0, False, "test")


def test_data_parallel_slices_tile_each_global_batch(tmp_path: Path) -> None:
    write_harvest(tmp_path / "acts", [30, 45, 25])
    full = open_activation_source(tmp_path / "acts", 8, 20, seed=5)
    halves = [open_activation_source(tmp_path / "acts", 8, 20, seed=5) for _ in range(2)]
    halves[0].local_rows, halves[1].local_rows = slice(0, 10), slice(10, 20)
    for _ in range(7):  # across shard boundaries and into the next epoch
        assert torch.equal(next(full), torch.cat([next(h) for h in halves]))
    assert halves[0].state_dict() == full.state_dict()  # positions are global: checkpoints agree
    assert torch.equal(halves[1].take_rows(30), full.take_rows(30))  # resampling reads all rows
