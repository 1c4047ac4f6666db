"""The SAE variants by name (`SAEConfig.variant`): one module each, over `base.Variant`."""

from __future__ import annotations

from trainer.config import ConfigError, SAEConfig
from trainer.sae.variants.base import LossTerms, Variant, sparsity_coefficient
from trainer.sae.variants.batchtopk import BatchTopK
from trainer.sae.variants.jumprelu import JumpReLU
from trainer.sae.variants.l1_decnorm import L1DecNorm
from trainer.sae.variants.matryoshka_batchtopk import MatryoshkaBatchTopK
from trainer.sae.variants.paper import Paper
from trainer.sae.variants.topk import TopK

VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (Paper(), L1DecNorm(), TopK(), BatchTopK(), JumpReLU(), MatryoshkaBatchTopK())
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown SAE variant {name!r}") from None


def peak_lr(cfg: SAEConfig) -> float:
    """Adam's peak learning rate: `cfg.lr`, else the variant's default."""
    return cfg.lr if cfg.lr is not None else get_variant(cfg.variant).default_lr


__all__ = ["VARIANTS", "LossTerms", "Variant", "get_variant", "peak_lr", "sparsity_coefficient"]
