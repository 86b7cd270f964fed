"""Distributed training under torchrun: rank discovery, process group, DDP wrapping, reductions.

One small object so the trainer reads the same whether it runs alone or as one of N ranks: with
``WORLD_SIZE`` unset (or 1) every method is a no-op and nothing distributed is imported or initialised.
gloo on CPU, nccl on CUDA; each rank uses ``cuda:LOCAL_RANK`` when CUDA is used.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from distill.models.inference import select_device


@dataclass
class DistributedContext:
    """This process's place in a torchrun job (rank 0 of 1 when run alone).

    Attributes:
        rank: This process's rank.
        world_size: The number of ranks.
        local_rank: The rank on this machine, which picks its GPU.
        device: The device this rank trains on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes outputs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether more than one rank runs."""
        return self.world_size > 1

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DistributedDataParallel when several ranks run; ``module`` itself otherwise."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # static_graph: the projection P (and a loss's own layers) get no gradient under recipes that do not read
        # them; the same parameters go unused every step, so DDP learns which after the first step (where
        # find_unused_parameters would search every step). broadcast_buffers=False: buffers that must agree are
        # kept in step by their owners (CRD's student memory gathers every rank's rows); the rest need not be
        # copied every step (CRD's teacher bank is N × D).
        with warnings.catch_warnings():  # torch ≥ 2.13 deprecates the name; its successor syncs at init (CRD's bank)
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            return DistributedDataParallel(module, device_ids=ids, static_graph=True, broadcast_buffers=False)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Tear the process group down."""
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def init_distributed(device: str = "auto") -> DistributedContext:
    """Read torchrun's environment; initialise the process group when there is more than one rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = select_device(device)
    if world_size <= 1:
        return DistributedContext(0, 1, 0, chosen)
    import torch.distributed as dist

    if chosen.type == "cuda":
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, chosen)
