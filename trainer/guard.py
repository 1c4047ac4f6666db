"""Training stops at the first non-finite number, before it reaches the weights or a checkpoint.

One fused `isfinite` over the step's loss and gradient norm, checked before the optimizer step:
a NaN or Inf in the loss or any gradient stops the run at that step, and a non-finite weight does
so one step later (it makes the next loss non-finite). The last checkpoint is never overwritten
with a diverged state, so `--resume` continues from it.
"""

from __future__ import annotations

import torch


class DivergenceError(RuntimeError):
    """A training step produced a non-finite loss or gradient; the message names the stage and step."""


def check_finite(stage: str, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
    """Raise DivergenceError unless the (scalar) loss and gradient norm are both finite."""
    values = torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().reshape(())])
    if bool(torch.isfinite(values).all()):
        return
    loss_value, norm_value = values.tolist()
    raise DivergenceError(
        f"{stage}: non-finite training step {step} (loss {loss_value}, gradient norm {norm_value}); "
        "stopped before updating the weights, the last checkpoint is intact: fix the cause "
        "(learning rate, inputs) and rerun with --resume"
    )
