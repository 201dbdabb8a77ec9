"""Several processes under ``torchrun``: the process group, and what each rank keeps for itself.

Parameters and batch-norm statistics are shared (DistributedDataParallel broadcasts buffers from rank 0
at every step); state that belongs to one process is not. That is the RNG and a model's *rank-local
buffers*: the persistent chains of the RBM prior's PCD sampler, which each rank advances with its own
noise. DDP is told to leave them alone, and checkpoints hold one copy per rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import UserError


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run created the process group and destroys it when done

    @classmethod
    def from_env(cls, device_name: str) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        owns = not dist.is_initialized()
        if owns:
            backend = "nccl" if device_name.startswith("cuda") else "gloo"
            dist.init_process_group(backend)
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")), owns)

    def close(self) -> None:
        """Wait for every rank, then tear down the process group this run created (an exit with
        live gloo threads can abort a rank: "terminate called without an active exception")."""
        if self.world > 1:
            dist.barrier()
            if self.owns_group:
                dist.destroy_process_group()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree(self, error: str | None) -> None:
        """Raise rank 0's :class:`UserError` on every rank (``error``: rank 0's message, or None)."""
        if self.world > 1:
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise UserError(error)

    def any(self, flag: int) -> int:
        """The largest ``flag`` over the ranks (e.g. a signal number; 0 for none)."""
        if self.world == 1:
            return flag
        value = torch.tensor([flag], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value)

    def average(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The mean of each tensor over the ranks (in place; gradients DDP does not reduce itself)."""
        if self.world > 1:
            for t in tensors:
                dist.all_reduce(t)
                t.div_(self.world)
        return tensors

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if self.world == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered


def rank_local_buffers(model: nn.Module) -> list[str]:
    """``state_dict`` names of the buffers that belong to one rank: a module lists its own in the class
    attribute ``rank_local_buffers``."""
    return [f"{prefix}.{name}" if prefix else name
            for prefix, module in model.named_modules()
            for name in getattr(module, "rank_local_buffers", ())]


def wrap(model: nn.Module, ddp: Distributed) -> nn.Module:
    """``model`` under DistributedDataParallel (with more than one rank), its rank-local buffers excluded
    from the broadcasts and redrawn on each rank from that rank's own RNG stream. The estimator's own
    parameters are left out too: they follow their ``aux_loss``, whose gradient the loop averages itself."""
    if ddp.world == 1:
        return model
    local = rank_local_buffers(model)
    local += [name for name, _ in model.named_parameters() if name.startswith("estimator.")]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, local)
    for module in model.modules():
        if getattr(module, "rank_local_buffers", ()):
            module.reset_rank_local()
    return DistributedDataParallel(model)


def local_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's rank-local buffers, by ``state_dict`` name (copies)."""
    state = model.state_dict()
    return {name: state[name].detach().clone() for name in rank_local_buffers(model)}


def load_local_state(model: nn.Module, per_rank: dict[str, list[torch.Tensor]], rank: int) -> None:
    """Put back this rank's entries of a checkpoint's ``{name: [rank 0's, rank 1's, ...]}``."""
    state = model.state_dict()
    for name in rank_local_buffers(model):
        state[name].copy_(per_rank[name][rank])
