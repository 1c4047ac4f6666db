"""SAELens's folder layout (`cfg.json` + `sae_weights.safetensors`): its file names, and reading and
checking a folder's config and weights, ours or one that SAELens itself saved (architectures
standard, topk, jumprelu). `SparseAutoencoder.load` (trainer.sae.autoencoder) builds the module
from what these functions read; this module never builds one, so it sits below the autoencoder.

Reading an SAE folder in SAELens's layout (`cfg.json` + `sae_weights.safetensors`): ours, or one
that SAELens itself saved (architectures standard, topk, jumprelu).

SAELens's inference SAE (sae_lens/saes/sae.py, standard_sae.py, topk_sae.py, jumprelu_sae.py):

    x' = norm_in(x) − b_dec · [apply_b_dec_to_input];   pre = x' W_enc + b_enc
    f  = σ(pre)  (ReLU; TopK_k then ReLU; pre · 1[pre > θ])
    x̂  = norm_out(f W_dec + b_dec)

Everything that is linear is folded into our SparseAutoencoder (x̄ = x − b_dec, f = σ(x̄ W_enc +
b_enc), x̂ = f W_dec + b_dec) exactly:

- `apply_b_dec_to_input: false`: b_enc ← b_enc + b_dec W_enc.
- TopK `rescale_acts_by_decoder_norm`: SAELens ranks pre · ‖W_dec row‖ and decodes f / ‖W_dec row‖;
  scaling W_enc's columns and b_enc by the norms and dividing the rows of W_dec by them gives the
  same f and x̂ (SAELens's own `fold_W_dec_norm`).

The per-input normalisations (`layer_norm`, `constant_norm_rescale`) are not linear: they load as
`NormalizedInputSAE`, which normalises in `encode`/`forward` and undoes it on the reconstruction.
What we cannot reproduce is refused with a message saying why: `expected_average_only_in` (its
scale is not in the folder), `covariance_whitening`, other activation functions and architectures,
a TopK config without `k`, negative JumpReLU thresholds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from trainer.config import SAEConfig

if TYPE_CHECKING:
    from trainer.sae.autoencoder import SparseAutoencoder

HOOK_NAME = "blocks.0.mlp.hook_post"  # trainer.lm.model.HOOK_MLP_POST; kept here so loading needs no model
WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"

ARCHITECTURES = {"standard": "paper", "topk": "topk", "jumprelu": "jumprelu"}
INPUT_NORMS = ("layer_norm", "constant_norm_rescale")
LAYER_NORM_EPS = 1e-5  # SAELens's run_time_activation_ln_in


class SAEFormatError(ValueError):
    """An SAE folder this tool cannot load faithfully; the message says what and why."""


def read_cfg(directory: Path) -> dict[str, Any]:
    """The folder's cfg.json as a dict (both files checked to exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no sparse autoencoder at {directory}: not a folder")
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (directory / name).exists():
            raise FileNotFoundError(f"no sparse autoencoder at {directory}: {name} is missing")
    try:
        saved = json.loads((directory / CFG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"SAE config {directory / CFG_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(saved, dict):
        raise ValueError(f"SAE config {directory / CFG_FILE} is not a JSON object")
    return saved


def saved_hook_name(saved: dict[str, Any]) -> str | None:
    """The hook the SAE was trained on: flat (SAELens < 6, ours) or under "metadata" (SAELens 6)."""
    for holder in (saved, saved.get("metadata") or {}, saved.get("meta") or {}):
        name = holder.get("hook_name") or holder.get("hook_point")
        if name:
            return str(name)
    return None


def ours_config(saved: dict[str, Any]) -> SAEConfig:
    fields = {f.name for f in dataclasses.fields(SAEConfig)}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in saved["monosemantic"].items() if k in fields
    }
    return SAEConfig(**values)


def foreign_config(saved: dict[str, Any], path: Path) -> tuple[SAEConfig, str]:
    """Our SAEConfig for an SAE trained elsewhere, and its input normalisation ('none' or one of
    INPUT_NORMS); refuses what the loader cannot reproduce."""
    architecture = saved.get("architecture", "standard")
    variant = ARCHITECTURES.get(architecture)
    if variant is None:
        raise SAEFormatError(
            f"SAE config {path}: architecture {architecture!r} is not supported "
            f"(this tool reads {', '.join(ARCHITECTURES)})"
        )
    for key in ("d_in", "d_sae"):
        if not isinstance(saved.get(key), int) or saved[key] <= 0:
            raise SAEFormatError(
                f"SAE config {path}: {key} must be a positive integer, got {saved.get(key)!r}"
            )
    activation = saved.get("activation_fn", saved.get("activation_fn_str", "relu"))
    if activation not in ("relu", "topk", None):
        raise SAEFormatError(
            f"SAE config {path}: activation function {activation!r} is not supported (relu only)"
        )
    if saved.get("finetuning_scaling_factor"):
        raise SAEFormatError(f"SAE config {path}: finetuning_scaling_factor is not supported")
    norm = saved.get("normalize_activations") or "none"
    if norm == "expected_average_only_in":
        raise SAEFormatError(
            f"SAE config {path}: normalize_activations 'expected_average_only_in' needs the dataset's "
            "scaling factor, which the folder does not hold; fold it into the weights first "
            "(SAELens: sae.fold_activation_norm_scaling_factor(factor), then save again)"
        )
    if norm != "none" and norm not in INPUT_NORMS:
        raise SAEFormatError(f"SAE config {path}: normalize_activations {norm!r} is not supported")
    k: Any = 1
    if variant == "topk":
        k = saved.get("k", (saved.get("activation_fn_kwargs") or {}).get("k"))
        if not isinstance(k, int) or not 0 < k <= saved["d_sae"]:
            raise SAEFormatError(
                f"SAE config {path}: a topk SAE needs k, the number of active latents, in (0, d_sae]; "
                f"got {k!r}"
            )
    return SAEConfig(d_in=saved["d_in"], d_sae=saved["d_sae"], variant=variant, k=k), norm  # type: ignore[arg-type]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return {name: tensor.float() for name, tensor in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"SAE weights {path} are corrupt or truncated ({exc})") from exc


@torch.no_grad()
def fold_foreign(saved: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Fold SAELens's linear options into plain weights, in place (see the module docstring)."""
    if saved.get("apply_b_dec_to_input") is False:
        tensors["b_enc"] = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]
    if saved.get("architecture") == "topk" and saved.get("rescale_acts_by_decoder_norm"):
        norms = tensors["W_dec"].norm(dim=1).clamp_min(1e-8)  # SAELens's get_W_dec_norm
        tensors["W_dec"] = tensors["W_dec"] / norms[:, None]
        tensors["W_enc"] = tensors["W_enc"] * norms[None, :]
        tensors["b_enc"] = tensors["b_enc"] * norms
    if "threshold" in tensors and bool((tensors["threshold"] < 0).any()):
        raise SAEFormatError(f"SAE weights {path}: negative JumpReLU thresholds are not supported")


def check_sae_fits(
    sae: SparseAutoencoder, d_in: int, hook_name: str = HOOK_NAME, what: str = "the model"
) -> None:
    """Refuse an SAE that does not read `d_in`-dimensional activations at `hook_name`."""
    sae_hook = getattr(sae, "hook_name", None)
    if sae_hook is not None and sae_hook != hook_name:
        raise SAEFormatError(
            f"the SAE was trained on hook {sae_hook!r} but {what} is read at {hook_name!r}: "
            "use an SAE trained at that hook"
        )
    if sae.cfg.d_in != d_in:
        raise SAEFormatError(
            f"the SAE reads {sae.cfg.d_in}-dimensional inputs but {what} gives {d_in} at {hook_name!r}: "
            "this SAE was not trained on this model"
        )
