"""Pin one feature while the model writes: the paper's "downstream effect" experiment.

Greedy continuations of a prompt, once as the model writes it and once with one feature (or,
for a 'neurons' run, one neuron) held at a fixed value at every position, prompt and generated
(the pinning itself: trainer/lm/steering.py, shared with the case studies).
Contexts longer than the model's n_ctx lose their oldest tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.live.inference import Artifacts

if TYPE_CHECKING:
    import torch

TOP_NEXT = 10


@dataclass(frozen=True)
class NextToken:
    token_id: int
    logit: float
    probability: float


@dataclass(frozen=True)
class Continuation:
    token_ids: list[int]  # the generated tokens only
    text: str  # the generated tokens decoded
    next_tokens: list[NextToken]  # the top next tokens at the last prompt position


@dataclass(frozen=True)
class Steering:
    prompt_ids: list[int]
    truncated: bool  # the prompt is longer than the context: the model saw its last n_ctx tokens
    activation: float  # the feature's own activation at the last prompt position (unpinned)
    unpinned: Continuation
    pinned: Continuation


def _top_next(logits: torch.Tensor, k: int) -> list[NextToken]:
    import torch

    probabilities = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(logits.float(), min(k, logits.shape[-1]))
    return [
        NextToken(token_id=int(i), logit=float(v), probability=float(probabilities[i]))
        for v, i in zip(top.values, top.indices, strict=True)
    ]


def _generate(
    artifacts: Artifacts, prompt_ids: list[int], n_tokens: int, replacement: Any, k: int
) -> Continuation:
    import torch

    ids = list(prompt_ids)
    next_tokens: list[NextToken] = []
    for step in range(n_tokens):
        idx = torch.tensor([ids[-artifacts.n_ctx :]], dtype=torch.long)
        logits = artifacts.lm.logits(idx, replacement)[0, -1]
        if step == 0:
            next_tokens = _top_next(logits, k)
        ids.append(int(torch.argmax(logits)))
    generated = ids[len(prompt_ids) :]
    text = artifacts.tokenizer.decode(generated, skip_special_tokens=False)
    return Continuation(token_ids=generated, text=text, next_tokens=next_tokens)


def steer(
    artifacts: Artifacts, text: str, feature: int, value: float, n_tokens: int, k: int = TOP_NEXT
) -> Steering | None:
    """Greedy continuations of `text` without and with `feature` pinned to `value`; None if the
    text has no tokens."""
    import torch

    from trainer.lm.steering import pin_feature, pin_neuron  # torch, only when steering is used

    prompt_ids = artifacts.encode(text)
    if not prompt_ids:
        return None
    sae = artifacts.sae

    def replacement(x: torch.Tensor) -> torch.Tensor:
        return pin_feature(x, sae, feature, value) if sae is not None else pin_neuron(x, feature, value)

    with torch.no_grad(), artifacts.lock:
        last = torch.tensor([prompt_ids[-artifacts.n_ctx :]], dtype=torch.long)
        at_hook = artifacts.lm.activations(last)[0, -1:].float()
        activation = float((sae.encode(at_hook) if sae is not None else at_hook)[0, feature])
        return Steering(
            prompt_ids=prompt_ids,
            truncated=len(prompt_ids) > artifacts.n_ctx,
            activation=activation,
            unpinned=_generate(artifacts, prompt_ids, n_tokens, None, k),
            pinned=_generate(artifacts, prompt_ids, n_tokens, replacement, k),
        )
