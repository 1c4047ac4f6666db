"""Pin one unit while the model writes: the paper's "downstream effect" experiment.

For an SAE feature the activations x at the hook become x + (value − f_i(x))·W_dec[i]: only
feature i changes, the SAE's reconstruction error is kept, and value = f_i(x) changes nothing.
A neuron is simply set to the value. The app's steering page (app/live/steering.py) and the case
studies (trainer/analysis/case_studies.py) both pin through these.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.lm.hooks import HookedLM, Replacement


def pin_feature(x: torch.Tensor, sae: Any, index: int, value: float) -> torch.Tensor:
    """Activations x [..., d_in] at the hook with SAE feature `index` moved to `value` and nothing else
    changed: x + (value − f_i(x))·W_dec[i]."""
    f_i: torch.Tensor = sae.encode(x.reshape(-1, x.shape[-1]).float())[:, index].reshape(x.shape[:-1])
    direction: torch.Tensor = sae.W_dec[index]
    return x + (value - f_i).unsqueeze(-1).to(x.dtype) * direction.to(x.dtype)


def pin_neuron(x: torch.Tensor, index: int, value: float) -> torch.Tensor:
    """Activations x [..., d_in] at the hook with neuron `index` set to `value`."""
    pinned = x.clone()
    pinned[..., index] = value
    return pinned


@torch.no_grad()
def greedy_tokens(
    lm: HookedLM, prompts: torch.Tensor, n_tokens: int, replacement: Replacement | None = None
) -> torch.Tensor:
    """[batch, n_tokens] greedy continuations of prompts [batch, seq], with `replacement` at the hook
    at every position; contexts longer than the model's n_ctx lose their oldest tokens."""
    ids = prompts
    for _ in range(n_tokens):
        logits = lm.logits(ids[:, -lm.n_ctx :], replacement)[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompts.shape[1] :]
