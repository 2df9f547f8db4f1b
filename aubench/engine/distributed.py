"""Process-group setup for torchrun and the few collectives the engine needs.

`torchrun --nproc_per_node K -m aubench.cli train ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
we then join a process group (NCCL on GPU, gloo on CPU). Without those variables everything
runs in one process and the collectives are no-ops, so the engine has a single code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from aubench.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """"cpu", "cuda", "cuda:1" or None (= cuda when available). Under torchrun, cuda means cuda:LOCAL_RANK."""
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (use cpu or cuda)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is available (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise UserError(f"--device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif device.type != "cpu":
        raise UserError(f"--device {name!r} is not supported (use cpu or cuda)")
    return device


def setup_distributed(device_name: str | None = None) -> DistEnv:
    """Join the torchrun process group if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]
    return obj


def sync_batchnorm(method: torch.nn.Module) -> torch.nn.Module:
    """`method` with its BatchNorm layers replaced by SyncBatchNorm (same parameters and buffers,
    so the same state dict), which normalise training batches with the statistics of every
    process's batch (--sync-bn); in eval mode they are plain batch norm."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)  # the same object: a method is no BatchNorm


class StepModule(torch.nn.Module):
    """Lets DDP wrap a method: forward is the method's training step."""

    def __init__(self, method: torch.nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch, state):
        return self.method.training_step(batch, state)


def step_module(method: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """The module the training loop calls for a step of `method`: wrapped in DistributedDataParallel
    (gradients all-reduced over ranks) under torchrun, the method's step itself otherwise. DDP looks
    for parameters without a gradient each step only where the method declares it needs to
    (AUMethod.unused_parameters)."""
    module = StepModule(method)
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                   find_unused_parameters=method.unused_parameters)
