"""Data-parallel helpers over `torch.distributed`, each a no-op in a single process.

`torchrun --nproc-per-node N -m monosemantic.cli train-sae ...` sets WORLD_SIZE, RANK and LOCAL_RANK;
`init_from_env` then joins the process group (gloo on CPU, NCCL on CUDA). Every rank reads its own
slice of each global batch, gradients are summed with one all-reduce per step, and only rank 0
writes files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank; before the group is joined, torchrun's RANK (0 outside torchrun)."""
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def rank_device(device: str) -> torch.device:
    """`device` for this rank: "cuda" becomes this process's GPU, cuda:LOCAL_RANK."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(device)


@contextlib.contextmanager
def init_from_env(device: str = "cpu") -> Iterator[None]:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1; leave it on exit."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        yield
        return
    target = rank_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    try:
        yield
        # Leave together: a rank tearing down its connections while rank 0 still writes files
        # made gloo abort the early leaver ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the ranks, in place."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (all of the same shape) concatenated along dim 0, in rank order."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def rank_rows(n_rows: int) -> slice:
    """This rank's rows of a global batch of `n_rows` (which the world size must divide)."""
    size = world_size()
    if n_rows % size:
        raise ValueError(f"a batch of {n_rows} rows does not split evenly over {size} processes")
    per_rank = n_rows // size
    return slice(rank() * per_rank, (rank() + 1) * per_rank)
