"""The sparse autoencoder of Bricken et al. 2023 ("Problem Setup" / "Sparse Autoencoder"):

    x̄ = x − b_dec;   f = σ(x̄ W_enc + b_enc);   x̂ = f W_dec + b_dec

Shapes: W_enc [d_in, d_sae], W_dec [d_sae, d_in] (one dictionary vector per row), b_enc [d_sae],
b_dec [d_in]. The activation σ, any extra parameter and the saved threshold are the variant's
(trainer.sae.variants).

`save` writes the layout SAELens's `SAE.load_from_disk` reads: `sae_weights.safetensors` and
`cfg.json` (a batchtopk SAE is saved as a jumprelu one with a uniform threshold, as SAELens does).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from trainer.checkpoint import atomic_save_safetensors, atomic_write_text
from trainer.config import SAEConfig
from trainer.sae.saelens_format import (
    CFG_FILE,
    HOOK_NAME,
    INPUT_NORMS,
    LAYER_NORM_EPS,
    WEIGHTS_FILE,
    fold_foreign,
    foreign_config,
    ours_config,
    read_cfg,
    read_weights,
    saved_hook_name,
)
from trainer.sae.variants import Variant, get_variant


class SparseAutoencoder(nn.Module):
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_enc: nn.Parameter
    b_dec: nn.Parameter
    log_threshold: nn.Parameter  # jumprelu only: registered by its Variant.add_parameters
    batchtopk_threshold: torch.Tensor
    variant: Variant  # the behaviour of `cfg.variant`
    hook_name: str | None = HOOK_NAME  # where it reads the model; set from cfg.json on loading

    def __init__(self, cfg: SAEConfig, seed: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.variant = get_variant(cfg.variant)
        generator = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
        # Anthropic's init (April 2024 update): random dictionary directions, the encoder the
        # decoder's transpose, both small (init_norm): with d_sae ≫ d_in and half the latents
        # active at first, a unit-norm tied init reconstructs ~d_sae/(2 d_in) × x and spends the
        # short runs we can afford undoing that. Unit-norm variants keep unit decoder rows.
        init_norm = self.variant.default_init_norm if cfg.init_norm is None else cfg.init_norm
        W_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if not self.variant.unit_norm_decoder:
            W_dec *= init_norm
        W_enc = W_dec.T.clone() if not self.variant.unit_norm_decoder else W_dec.T * init_norm
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_enc.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.variant.add_parameters(self)
        # batchtopk's inference threshold: a running mean of the smallest kept activation per batch.
        # Every variant has it, so that every checkpoint and state_dict has the same layout.
        self.register_buffer("batchtopk_threshold", torch.zeros(()))
        # How it was trained (input scale, the λ reached, ...): saved in cfg.json under "training".
        self.training_record: dict[str, Any] = {}

    @property
    def threshold(self) -> torch.Tensor | None:
        """The per-latent threshold [d_sae] of a jumprelu (or batchtopk at inference) SAE."""
        return self.variant.threshold(self)

    # ------------------------------------------------------------------ forward

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """(x − b_dec) W_enc + b_enc, [N, d_sae]. Written as x W_enc + (b_enc − b_dec W_enc) so that
        training never needs the gradient of the [N, d_in] input, only of the small bias vector."""
        return torch.addmm(self.b_enc - self.b_dec @ self.W_enc, x, self.W_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """f from the pre-activations, by variant (batchtopk depends on `self.training`)."""
        return self.variant.activate(self, pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations f [N, d_sae] of inputs x [N, d_in]."""
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """x̂ = f W_dec + b_dec, [N, d_in]."""
        return torch.addmm(self.b_dec.to(f.dtype), f, self.W_dec.to(f.dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂ [N, d_in], f [N, d_sae])."""
        f = self.encode(x)
        return self.decode(f), f

    # ------------------------------------------------------------------ init and constraints

    @torch.no_grad()
    def init_b_dec(self, sample: torch.Tensor, method: str = "geometric_median", n_iter: int = 64) -> None:
        """Set b_dec to the geometric median (Weiszfeld's algorithm) or the mean of `sample` [N, d_in],
        as Anthropic initialise the decoder bias."""
        sample = sample.float()
        point = sample.mean(0)
        if method == "geometric_median":
            for _ in range(n_iter):
                weights = 1.0 / (sample - point).norm(dim=1).clamp_min(1e-8)
                new_point = (weights[:, None] * sample).sum(0) / weights.sum()
                if (new_point - point).norm() <= 1e-6 * point.norm().clamp_min(1e-8):
                    point = new_point
                    break
                point = new_point
        elif method != "mean":
            raise ValueError(f"unknown b_dec init {method!r}: use geometric_median or mean")
        self.b_dec.copy_(point)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every dictionary vector (row of W_dec) to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the part of each W_dec row's gradient along the row, so that Adam's step does not
        fight the unit-norm constraint (Towards Monosemanticity, appendix on the autoencoder)."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Trained on x · scale, read raw x instead: every latent's activation (and threshold) and
        both biases divide by `scale`, the dictionary directions stay as they are."""
        threshold = self.threshold
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)
        if threshold is not None:
            self.variant.load_threshold(self, threshold / scale)

    # ------------------------------------------------------------------ save / load

    def weights_for_saving(self) -> dict[str, torch.Tensor]:
        tensors = {
            name: getattr(self, name).detach().float().contiguous()
            for name in ("W_enc", "W_dec", "b_enc", "b_dec")
        }
        threshold = self.threshold
        if threshold is not None:
            tensors["threshold"] = threshold.detach().float().contiguous().clone()
        return tensors

    def saelens_cfg(
        self, model_name: str = "monosemantic-1l", context_size: int | None = None
    ) -> dict[str, Any]:
        """cfg.json: SAELens's fields (flat, and under "meta" as SAELens ≥ 6 writes them) and ours."""
        meta = {
            "model_name": model_name,
            "hook_name": self.hook_name or HOOK_NAME,
            "hook_layer": 0,
            "hook_head_index": None,
            "context_size": context_size,
            "prepend_bos": False,
            "dataset_path": "",
        }
        cfg: dict[str, Any] = {
            "architecture": self.variant.saelens_architecture,
            "d_in": self.cfg.d_in,
            "d_sae": self.cfg.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "activation_fn_str": self.variant.saelens_activation_fn,
            **meta,
            "meta": meta,
            "monosemantic": dataclasses.asdict(self.cfg),
            "training": self.training_record,
        }
        cfg.update(self.variant.saelens_fields(self.cfg))
        return cfg

    def save(
        self, directory: Path, model_name: str = "monosemantic-1l", context_size: int | None = None
    ) -> None:
        """Write `sae_weights.safetensors` and `cfg.json` to `directory`, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(
            self.weights_for_saving(), directory / WEIGHTS_FILE, metadata={"variant": self.cfg.variant}
        )
        atomic_write_text(
            directory / CFG_FILE, json.dumps(self.saelens_cfg(model_name, context_size), indent=2)
        )

    @classmethod
    def load(cls, directory: Path) -> SparseAutoencoder:
        """Read an SAE saved by `save`, or by SAELens (standard/topk/jumprelu): fp32, eval mode,
        with `hook_name` set to the hook it was trained on (None if the config names none).
        Raises a one-line error otherwise (trainer.sae.saelens_format reads and checks)."""
        return load_sae(directory)


class NormalizedInputSAE(SparseAutoencoder):
    """An SAE trained on per-input normalised activations (SAELens `normalize_activations`
    layer_norm or constant_norm_rescale): `encode` and `forward` take raw activations.
    `decode` alone stays in the normalised space (it has no input to undo the scale with)."""

    def __init__(self, cfg: SAEConfig, input_norm: str) -> None:
        super().__init__(cfg)
        self.input_norm = input_norm

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x normalised, shift, scale) with x = normalised · scale + shift, as SAELens does it."""
        if self.input_norm == "constant_norm_rescale":
            scale = x.norm(dim=-1, keepdim=True) / self.cfg.d_in**0.5
            return x / scale, torch.zeros_like(scale), scale
        mean = x.mean(dim=-1, keepdim=True)
        std = (x - mean).std(dim=-1, keepdim=True)
        return (x - mean) / (std + LAYER_NORM_EPS), mean, std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return super().encode(self.normalize(x)[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normalized, shift, scale = self.normalize(x)
        f = super().encode(normalized)
        return self.decode(f) * scale.to(f.dtype) + shift.to(f.dtype), f

    def saelens_cfg(
        self, model_name: str = "monosemantic-1l", context_size: int | None = None
    ) -> dict[str, Any]:
        return {**super().saelens_cfg(model_name, context_size), "normalize_activations": self.input_norm}


def load_sae(directory: Path) -> SparseAutoencoder:
    """Read an SAE folder (ours or SAELens's), fp32 and in eval mode, with `hook_name` set to the
    hook it was trained on (None if the config names none). Raises a one-line error otherwise."""
    directory = Path(directory)
    saved = read_cfg(directory)
    cfg_path, weights_path = directory / CFG_FILE, directory / WEIGHTS_FILE
    ours = "monosemantic" in saved
    cfg, norm = (
        (ours_config(saved), saved.get("normalize_activations") or "none")
        if ours
        else foreign_config(saved, cfg_path)
    )
    tensors = read_weights(weights_path)
    sae = NormalizedInputSAE(cfg, norm) if norm in INPUT_NORMS else SparseAutoencoder(cfg)
    expected = {name: tuple(t.shape) for name, t in sae.weights_for_saving().items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"SAE weights {weights_path} have no tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"SAE weights {weights_path}: {name} has shape {tuple(tensors[name].shape)}, "
                f"cfg.json implies {shape}"
            )
    if not ours:
        fold_foreign(saved, tensors, weights_path)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(sae, name).copy_(tensors[name])
        if "threshold" in expected:
            sae.variant.load_threshold(sae, tensors["threshold"])
    sae.training_record = dict(saved.get("training") or {})
    sae.hook_name = saved_hook_name(saved)
    return sae.eval()
