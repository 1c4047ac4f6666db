"""Tiny SAE configs and synthetic activations shared by the SAE tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from trainer.config import SAEConfig
from trainer.sae import ActivationSource, SparseAutoencoder


def sae_cfg(**overrides: object) -> SAEConfig:
    values: dict = {
        "d_in": 32,
        "d_sae": 192,
        "batch_size": 256,
        "n_tokens": 256 * 40,
        "k": 3,
        "lr": 1e-2,
        "checkpoint_interval": 10,
        "seed": 0,
    }
    values.update(overrides)
    return SAEConfig(**values)


def tiny_cfg(**overrides: object) -> SAEConfig:
    values: dict = {"d_in": 16, "d_sae": 48, "k": 4, "batch_size": 32, "n_tokens": 32 * 10, "seed": 3}
    values.update(overrides)
    return SAEConfig(**values)


def perturbed(sae: SparseAutoencoder) -> SparseAutoencoder:
    """Move every parameter off its init so a roundtrip that drops one shows."""
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if sae.cfg.variant == "batchtopk":
            sae.batchtopk_threshold.fill_(0.37)
    return sae


def superposition(
    n_rows: int, d_in: int = 32, n_features: int = 96, p: float = 0.03, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse non-negative codes over n_features random unit directions in d_in dimensions."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_features, d_in))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    codes = (rng.random((n_rows, n_features)) < p) * rng.uniform(0.5, 1.5, (n_rows, n_features))
    return (codes @ directions).astype(np.float32), directions


def mean_max_cosine(true_directions: np.ndarray, W_dec: torch.Tensor) -> float:
    learned = W_dec.detach().numpy()
    learned = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    return float((true_directions @ learned.T).max(axis=1).mean())


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


def open_activation_source_from(rows: np.ndarray, batch_size: int = 64) -> ActivationSource:
    """A source cycling over `rows` [N, d_in] in order."""
    rows = rows.astype(np.float32)
    return ActivationSource([lambda: rows], [len(rows)], rows.shape[1], batch_size, 0, False, "test")


def planted_superposition(
    n_rows: int,
    d_in: int = 64,
    n_features: int = 256,
    mean_active: float = 3.0,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Activations as users bring them: n_features (4 × d_in) random unit directions in superposition,
    feature i active with probability ∝ 1/(i+1)^0.7 (power law, mean_active per row in all), each
    with a non-negative heavy-tailed magnitude 0.5 + Exp(1), plus Gaussian noise on every dimension.
    Returns (rows [n_rows, d_in] fp32, directions [n_features, d_in], the planted mean L0)."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_features, d_in))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequency = 1.0 / np.arange(1, n_features + 1) ** 0.7
    frequency = np.minimum(frequency / frequency.sum() * mean_active, 0.5)
    active = rng.random((n_rows, n_features)) < frequency
    magnitudes = np.where(active, 0.5 + rng.exponential(1.0, (n_rows, n_features)), 0.0)
    rows = magnitudes @ directions + noise * rng.standard_normal((n_rows, d_in))
    return rows.astype(np.float32), directions, float(active.sum(1).mean())


def overcomplete_superposition(
    n_rows: int,
    d_in: int = 16,
    n_groups: int = 32,
    group_size: int = 4,
    p_group: float = 0.03,
    p_member: float = 0.6,
    noise: float = 0.02,
    seed: int = 0,
    uniform: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """An overcomplete planted set: n_groups · group_size (8 × d_in by default) random unit
    directions in d_in dimensions, in groups that fire together: a group is on in a row with
    probability p_group, and then each of its members with probability p_member, with a magnitude
    0.5 + Exp(1); plus Gaussian noise. Returns (rows [n_rows, d_in] fp32, directions
    [n_features, d_in], the planted mean L0)."""
    rng = np.random.default_rng(seed)
    n_features = n_groups * group_size
    directions = rng.standard_normal((n_features, d_in))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    group_on = rng.random((n_rows, n_groups)) < p_group
    active = np.repeat(group_on, group_size, axis=1) & (rng.random((n_rows, n_features)) < p_member)
    spread = (
        rng.uniform(0.0, 1.0, (n_rows, n_features)) if uniform else rng.exponential(1.0, (n_rows, n_features))
    )
    magnitudes = np.where(active, 0.5 + spread, 0.0)
    rows = magnitudes @ directions + noise * rng.standard_normal((n_rows, d_in))
    return rows.astype(np.float32), directions, float(active.sum(1).mean())
