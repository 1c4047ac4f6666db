"""Feature absorption on planted parent/child directions (Chanin et al. 2024, "A is for Absorption").

The planted set (`planted_hierarchy`): P parent directions, each with C child directions, all
orthonormal where d_in allows. Parent p fires on a row with probability `parent_p`; when it does,
one of its children c fires too with probability `child_p` (a child never fires without its
parent): x = a·p + b·c + noise, magnitudes a, b ~ U(0.8, 1.2).

Absorption: an SAE that saves L0 learns "p and not c" and "c with p folded in" latents. Then the
latent that looks like the parent (`absorption` below) is silent exactly when a child is present,
and its decoder may lean toward the children it absorbed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.config import SAEConfig
from trainer.sae.autoencoder import SparseAutoencoder
from trainer.sae.source import ActivationSource
from trainer.sae.variants.matryoshka_batchtopk import prefix_reconstructions


@dataclass(frozen=True)
class Hierarchy:
    rows: np.ndarray  # [N, d_in] fp32
    parents: np.ndarray  # [P, d_in] unit
    children: np.ndarray  # [P, C, d_in] unit
    parent_on: np.ndarray  # [N, P] bool
    child_on: np.ndarray  # [N, P] int: the child of each parent that fired, −1 for none


def planted_hierarchy(
    n_rows: int,
    d_in: int = 32,
    n_parents: int = 8,
    children_per_parent: int = 3,
    parent_p: float = 0.15,
    child_p: float = 0.75,
    noise: float = 0.02,
    seed: int = 0,
    directions_seed: int = 0,
) -> Hierarchy:
    """`n_rows` rows of the planted parent/child set described in the module docstring: the
    directions drawn from `directions_seed`, the rows from `seed` (another seed: held-out rows)."""
    n_directions = n_parents * (1 + children_per_parent)
    gaussian = np.random.default_rng(directions_seed).standard_normal((d_in, n_directions))
    if n_directions <= d_in:  # orthonormal: absorption, not interference, is what is measured
        directions = np.linalg.qr(gaussian)[0].T
    else:
        directions = (gaussian / np.linalg.norm(gaussian, axis=0)).T
    parents = directions[:n_parents]
    children = directions[n_parents:].reshape(n_parents, children_per_parent, d_in)
    rng = np.random.default_rng([directions_seed, seed])
    parent_on = rng.random((n_rows, n_parents)) < parent_p
    child_fires = parent_on & (rng.random((n_rows, n_parents)) < child_p)
    child_on = np.where(child_fires, rng.integers(0, children_per_parent, (n_rows, n_parents)), -1)
    parent_size = parent_on * rng.uniform(0.8, 1.2, (n_rows, n_parents))
    child_size = child_fires * rng.uniform(0.8, 1.2, (n_rows, n_parents))
    picked = children[np.arange(n_parents), np.maximum(child_on, 0)]  # [N, P, d_in]
    rows = parent_size @ parents + np.einsum("np,npd->nd", child_size, picked)
    rows += noise * rng.standard_normal((n_rows, d_in))
    return Hierarchy(rows.astype(np.float32), parents, children, parent_on, child_on)


@dataclass(frozen=True)
class Absorption:
    absorption: float  # mean over (parent, child): share of child-present rows the parent latent misses
    parent_recall: float  # share of parent-only rows (no child) on which the parent latent fires
    decoder_lean: float  # mean over (parent, child) of cos(parent latent's decoder, child)
    parent_cosine: float  # mean over parents of cos(parent latent's decoder, parent)


@torch.no_grad()
def absorption(sae: SparseAutoencoder, hierarchy: Hierarchy) -> Absorption:
    """How much of each child the SAE absorbs into its parent's latent, on `hierarchy`'s rows.

    Each parent's latent is the one whose decoder row has the largest cosine with the parent
    direction. Absorption of child c into parent p is the share of the rows where c fires (and so
    p) on which p's latent is silent; the score is its mean over all (parent, child) pairs. 0: the
    parent latent fires whenever its parent is present; 1: each child took the parent over entirely.
    `parent_recall` (the same latent on rows with the parent and no child) tells a parent latent
    that gave way to its children from one that is merely weak, and `decoder_lean` how far the
    parent latent's direction leans toward its children (0 for a clean parent latent)."""
    sae.eval()
    decoder = sae.W_dec.detach().float()
    decoder = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-8)  # [d_sae, d_in]
    parents = torch.from_numpy(hierarchy.parents).float()
    children = torch.from_numpy(hierarchy.children).float()
    parent_latent = (parents @ decoder.T).argmax(1)  # [P]
    fires = sae.encode(torch.from_numpy(hierarchy.rows))[:, parent_latent] > 0  # [N, P]
    parent_on = torch.from_numpy(hierarchy.parent_on)
    child_on = torch.from_numpy(hierarchy.child_on)
    misses, leans = [], []
    for p in range(len(parents)):
        for c in range(children.shape[1]):
            present = child_on[:, p] == c
            if present.any():
                misses.append(float((~fires[present, p]).float().mean()))
            leans.append(float(decoder[parent_latent[p]] @ children[p, c]))
    parent_only = parent_on & (child_on < 0)
    recall = float(fires[parent_only].float().mean()) if parent_only.any() else float("nan")
    cosine = float((decoder[parent_latent] * parents).sum(1).mean())
    return Absorption(float(np.mean(misses)), recall, float(np.mean(leans)), cosine)


def hierarchy_source(hierarchy: Hierarchy, batch_size: int, seed: int = 0) -> ActivationSource:
    """An activation source over the planted rows, shuffled."""
    rows = hierarchy.rows
    return ActivationSource([lambda: rows], [len(rows)], rows.shape[1], batch_size, seed, True, "planted")


def prefix_fvu(sae: SparseAutoencoder, rows: torch.Tensor, widths: tuple[int, ...]) -> list[float]:
    """The fraction of variance unexplained by each prefix of the dictionary (its first m latents
    alone, m in `widths`) on rows [N, d_in]; 1.0 is the mean predictor's."""
    with torch.no_grad():
        f = sae.encode(rows)
        variance = (rows - rows.mean(0)).pow(2).sum()
        return [
            float((rows - x_hat).pow(2).sum() / variance) for x_hat in prefix_reconstructions(sae, f, widths)
        ]


def absorption_cfg(variant: str, d_sae: int = 64, n_steps: int = 600, **overrides: object) -> SAEConfig:
    """The planted set's SAE at a variant's defaults: k / target L0 the planted mean L0 (about 2)."""
    batch_size = 256
    values: dict = {
        "d_sae": d_sae,
        "variant": variant,
        "batch_size": batch_size,
        "n_tokens": batch_size * n_steps,
    }
    values.update({"k": 2} if "topk" in variant else {"target_l0": 2.0})
    values.update(overrides)
    return SAEConfig(**values)
