"""torch.distributed plumbing for ``torchrun --nproc_per_node K -m attnprobe ...``.

Everything here is a no-op in a single process, so library code calls it unconditionally.
Under torchrun (``WORLD_SIZE`` > 1 in the environment) :func:`init_from_env` starts a
process group: NCCL when every rank has a GPU, else gloo.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(*, device: str = "cpu") -> bool:
    """Join the process group torchrun describes; return True when distributed."""
    if not launched_by_torchrun():
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
    return True


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(items: Sequence[T]) -> list[int]:
    """Indices of ``items`` this rank handles (round-robin, so sizes differ by at most one)."""
    return list(range(rank(), len(items), world_size()))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (on every rank); ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, *, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (float64 state stays float64)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def data_parallel(model: torch.nn.Module, *, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun, ``model`` itself otherwise.

    DDP averages gradients over ranks during ``backward`` and starts every rank from rank 0's
    parameters and buffers. ``model`` must already be on ``device`` (``cuda:LOCAL_RANK`` with NCCL).
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(model, device_ids=ids)
