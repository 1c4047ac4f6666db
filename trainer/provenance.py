"""Which language model a harvest's rows came from, so that no SAE is trained or evaluated beside
another model's activations (rows of one run evaluated with another run's model gave FVU 0.95,
without a word).

A harvest's manifest.json records the sha256 of the model's weight files and its hook; an SAE
trained on a harvest keeps both in its training record. `check_same_model` compares such a record
with the model a stage is about to use, where both are known. Manifests from before the digest
keep working: they are let through with one warning each.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.lm.model import HOOK_MLP_POST

if TYPE_CHECKING:
    from trainer.config import RunConfig

DIGEST_KEY = "model_digest"  # in a harvest's manifest.json and an SAE's training record
RECORDED_KEYS = (DIGEST_KEY, "hook")
# The files a model folder's weights are in, in the order transformers prefers them.
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_CHUNK = 1 << 20


class ModelMismatch(ValueError):
    """Activations (or an SAE trained on them) from another model or hook than the one at hand."""


class UnrecordedModelWarning(UserWarning):
    """A harvest from before manifests recorded their model: nothing can be checked."""


def weights_digest(folder: Path) -> str | None:
    """sha256 of a model folder's weight files, in name order; None where it has none."""
    for pattern in WEIGHT_PATTERNS:
        files = sorted(Path(folder).glob(pattern))
        if files:
            break
    else:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as weights:
            while chunk := weights.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """A language model as a harvest records it: where it is, its hook, its weights' digest
    (None: not a local folder, e.g. a Hugging Face hub id)."""

    where: str
    hook: str
    digest: str | None

    @classmethod
    def own(cls, lm_dir: Path) -> ModelIdentity:
        """Our one-layer model saved in `lm_dir` (its MLP hook)."""
        return cls(str(lm_dir), HOOK_MLP_POST, weights_digest(lm_dir))


def run_model(cfg: RunConfig) -> ModelIdentity | None:
    """The run's model (cfg.model_path, else our model in cfg.lm_dir); None before it is trained."""
    if cfg.model_path:
        folder = Path(cfg.model_path)
        return ModelIdentity(
            cfg.model_path, cfg.hook or "", weights_digest(folder) if folder.is_dir() else None
        )
    if not (cfg.lm_dir / "model.safetensors").exists():
        return None
    return ModelIdentity.own(cfg.lm_dir)


def recorded_model(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a harvest's manifest says of its model, for the training record of an SAE trained on it."""
    return {key: manifest[key] for key in RECORDED_KEYS if key in manifest}


_warned: set[str] = set()


def check_same_model(
    record: Mapping[str, Any], model: ModelIdentity | None, what: str, remedy: str, warn_unrecorded: bool
) -> None:
    """Raise ModelMismatch (one line) if `record` (a manifest or an SAE's training record) names
    another hook or other weights than `model`; where either side is unknown, let it through.
    `warn_unrecorded`: warn once per `what` if the record predates the digest."""
    if model is None:
        return
    hook = record.get("hook")
    if hook and model.hook and hook != model.hook:
        raise ModelMismatch(
            f"{what} are from hook {hook}, but {model.where} is read at {model.hook}: {remedy}"
        )
    if DIGEST_KEY not in record:
        if warn_unrecorded and what not in _warned:
            _warned.add(what)
            warnings.warn(
                f"{what} do not record their model (harvested before digests): "
                f"cannot check they come from {model.where}",
                UnrecordedModelWarning,
                stacklevel=2,
            )
        return
    digest = record[DIGEST_KEY]
    if digest is not None and model.digest is not None and digest != model.digest:
        raise ModelMismatch(
            f"{what} are from another model (weights sha256 {digest[:12]}) than {model.where} "
            f"(sha256 {model.digest[:12]}): {remedy}"
        )
