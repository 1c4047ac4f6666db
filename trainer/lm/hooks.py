"""The hook point: what harvest, evaluate and analyze need from a language model.

A `HookedLM` is a language model with one named hook point (TransformerLens's names:
`blocks.0.mlp.hook_post`, `blocks.3.hook_resid_post`, ...). Harvest reads the activations
there; evaluation splices an SAE's reconstruction (or zeros, or the mean) in there and measures
the next-token loss; analysis maps a feature's direction at the hook to the logits. Two
implementations: `OneLayerHooked` (our own model, hook `blocks.0.mlp.hook_post` only) and
`trainer.lm.hf_model.HFHookedLM` (any supported `transformers` causal LM, by forward hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from trainer.lm.model import HOOK_MLP_POST, OneLayerTransformer

Replacement = Callable[[torch.Tensor], torch.Tensor]  # activations at the hook -> what flows on

OWN_LOGIT_NOTE = "Direct effect on the next-token logits, through the MLP's output and the unembedding."


class HookError(ValueError):
    """A hook name the model does not have; the message lists the ones it has."""


@runtime_checkable
class HookedLM(Protocol):
    hook: str
    n_ctx: int  # tokens per context the model is run on
    vocab_size: int  # rows of the unembedding (may exceed the tokenizer's)
    d_in: int  # width of the activations at the hook
    logit_effects_note: str  # how `logit_weights` reaches the logits, shown on feature pages

    @property
    def module(self) -> torch.nn.Module:
        """The model, for eval()/train() and its device."""
        ...

    def activations(self, idx: torch.Tensor) -> torch.Tensor:
        """[batch, seq, d_in] at the hook for token ids idx [batch, seq], computing no further."""
        ...

    def run(
        self, idx: torch.Tensor, targets: torch.Tensor, replacement: Replacement | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean next-token cross-entropy in fp32, activations at the hook before any replacement),
        with `replacement` applied to what flows on from the hook."""
        ...

    def logits(self, idx: torch.Tensor, replacement: Replacement | None = None) -> torch.Tensor:
        """[batch, seq, vocab] next-token logits for idx, with `replacement` applied at the hook
        (the live steering page: generation with a feature pinned)."""
        ...

    def logit_weights(self) -> torch.Tensor:
        """[d_in, vocab]: each hook coordinate's direct effect on the logits (an approximation
        described by `logit_effects_note`)."""
        ...

    def neuron_vectors(self) -> torch.Tensor | None:
        """[d_in, d_model]: what each hook coordinate writes into the residual stream, when the
        coordinates are neurons (MLP hook_post); None where a neuron basis means nothing."""
        ...


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


class OneLayerHooked:
    """Our one-layer transformer behind the HookedLM interface (its MLP's hook_post)."""

    hook = HOOK_MLP_POST
    logit_effects_note = OWN_LOGIT_NOTE

    def __init__(self, model: OneLayerTransformer) -> None:
        self.module = model
        self.n_ctx = model.cfg.n_ctx
        self.vocab_size = model.cfg.vocab_size
        self.d_in = model.cfg.d_mlp

    def activations(self, idx: torch.Tensor) -> torch.Tensor:
        return self.module.mlp_activations(idx)

    def run(
        self, idx: torch.Tensor, targets: torch.Tensor, replacement: Replacement | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module(idx, targets, mlp_replacement=replacement, return_mlp_post=True)
        assert out.loss is not None and out.mlp_post is not None  # nosec B101  # narrows the type for mypy
        return out.loss, out.mlp_post

    def logits(self, idx: torch.Tensor, replacement: Replacement | None = None) -> torch.Tensor:
        return self.module(idx, mlp_replacement=replacement).logits

    def logit_weights(self) -> torch.Tensor:
        return self.module.direct_logit_weights()

    def neuron_vectors(self) -> torch.Tensor | None:
        return self.module.mlp.W_out.weight.T


def as_hooked(model: Any) -> HookedLM:
    """A HookedLM as is; our OneLayerTransformer wrapped into one."""
    if isinstance(model, OneLayerTransformer):
        return OneLayerHooked(model)
    if isinstance(model, HookedLM):
        return model
    raise TypeError(f"{type(model).__name__} is not a language model with a hook point")


def check_own_hook(hook: str | None) -> None:
    if hook is not None and hook != HOOK_MLP_POST:
        raise HookError(f"hook {hook!r} does not exist in our one-layer model; valid hooks: {HOOK_MLP_POST}")
