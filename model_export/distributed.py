"""Distributed data parallel training under torchrun: who am I, one global batch split over ranks.

`torchrun --nproc-per-node N -m model_export fit|cv|train ...` sets RANK, LOCAL_RANK and WORLD_SIZE;
without them everything runs as one process and nothing here changes a number. With them, every
rank draws the same shuffled order and augments the same global batch (so the numbers match one
process with the same global batch), keeps its own slice of it, and DDP averages the gradients;
BatchNorm statistics are those of the whole global batch (`GlobalBatchNorm2d`), as in one process.
Only rank 0 writes files. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, batch: int) -> slice:
        """This rank's contiguous share of a global batch of `batch` images (sizes differ by at most one)."""
        base, extra = divmod(batch, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def main_first(self, work: Callable[[], T]) -> T:
        """Run `work` on rank 0, then on the others (e.g. build the cache once; the others find it built)."""
        if not self.is_main:
            self.barrier()
        result = work()
        if self.is_main:
            self.barrier()
        return result


SINGLE = World()  # one process on the CPU: no torchrun


def world(device: torch.device) -> World:
    """The current world on `device` (a CUDA device means this rank's GPU), joining the process group under torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=device)
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=torch.device(f"cuda:{local_rank}") if cuda else device)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    torch's SyncBatchNorm does this on GPUs only; this one uses two differentiable all-reduces
    (sums, then squared deviations from the global mean: exact two-pass variance) and so runs
    on gloo as well. Outside distributed training it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        values = x.float()
        dims = (0, 2, 3)
        count = all_reduce(torch.tensor([float(values.numel() // values.shape[1])], device=values.device))
        mean = all_reduce(values.sum(dims)) / count
        centred = values - mean[None, :, None, None]
        variance = all_reduce((centred * centred).sum(dims)) / count
        with torch.no_grad():
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            self.running_var.mul_(1 - momentum).add_(momentum * variance.detach() * count / (count - 1))
            self.num_batches_tracked.add_(1)
        out = centred * torch.rsqrt(variance + self.eps)[None, :, None, None]
        out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)


def use_global_batch_norm(network: nn.Module, on: bool = True) -> nn.Module:
    """Switch every BatchNorm2d of `network` to GlobalBatchNorm2d (or back); the weights and state are untouched."""
    for module in network.modules():
        if type(module) is (nn.BatchNorm2d if on else GlobalBatchNorm2d):
            module.__class__ = GlobalBatchNorm2d if on else nn.BatchNorm2d
    return network
