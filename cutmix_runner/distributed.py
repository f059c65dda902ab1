"""Data-parallel training under torchrun (nccl on CUDA, gloo on CPU), in the few places a run
needs it:

- batches: `trainer.batch_size` stays the global batch; every rank draws the same shuffled
  order and augmentation as one process would and takes its own contiguous slice of each global
  batch (`data.train_batches`). CutMix and MixUp partners are drawn within a rank's slice.
- the model: wrapped in DistributedDataParallel anew at each stage, because freezing changes
  which parameters train. BatchNorm statistics are per rank unless `trainer.sync_bn=true`, which
  swaps every BatchNorm for `SyncedBatchNorm` (torch's own SyncBatchNorm refuses CPU tensors).
- rank 0 alone evaluates (the other ranks wait), decides whether a stage ends, writes
  metrics.jsonl, checkpoints, summary.json and the logs, and prints; `from_writer` hands its
  record to the others, so every rank takes the same branch.
- a stop request (SIGTERM, SIGINT) on any rank stops every rank after the same step.

Outside torchrun `current()` is a one-process world and all of this is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from cutmix_runner import interrupts
from cutmix_runner.errors import RunError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a torchrun job (rank 0 of 1 outside one)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def from_writer(self, value: T) -> T:
        """Rank 0's `value` on every rank (a pickled broadcast over gloo)."""
        if not self.parallel:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def writer_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (which wait for rank 0 to finish
        it): a download or a cache is made once, by the one writer. When the block fails on
        rank 0, the others raise its error too instead of running the block."""
        if not self.parallel:
            yield
            return
        if not self.is_writer:
            error = self.from_writer(None)
            if error is not None:
                raise error
            yield
            return
        try:
            yield
        except Exception as exc:
            self.from_writer(exc)
            raise
        self.from_writer(None)

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.parallel:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (in float64, on the CPU)."""
        if not self.parallel:
            return values
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def all_agree(self, holds: bool) -> bool:
        """Whether `holds` on every rank (a one-number all-reduce on the CPU)."""
        if not self.parallel:
            return holds
        flag = torch.tensor([float(holds)])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def check_stop(self) -> None:
        """KeyboardInterrupt on every rank once any rank was asked to stop; called after each
        step, so all ranks stop after the same one (a one-number all-reduce on the CPU)."""
        if not self.all_agree(not interrupts.requested()):
            raise KeyboardInterrupt

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as this stage trains it: DDP over its trainable parameters, or itself."""
        if not self.parallel:
            return model
        device = next(model.parameters()).device
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)

    def seed(self, seed: int) -> int:
        """A per-rank seed that is `seed` itself on rank 0 of 1 (single-process runs unchanged),
        so that ranks do not paste the same boxes into their different slices."""
        return seed * self.size + self.rank

    def check_checkpoint(self, rng: dict[str, Any], path: object) -> dict[str, Any]:
        """This rank's RNG state from a checkpoint written by the same number of processes."""
        saved = len(rng.get("ranks", [rng]))
        if saved != self.size:
            raise RunError(f"trainer.resume: {path} was trained by {saved} process(es), this run "
                           f"has {self.size}; resume it with torchrun --nproc_per_node={saved}")
        return rng["ranks"][self.rank] if self.parallel else rng


ONE_PROCESS = World()
_world = ONE_PROCESS


def current() -> World:
    return _world


def launched() -> World:
    """The world torchrun's environment describes (before joining its process group)."""
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                 int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def joined(device: str) -> Iterator[World]:
    """Join torchrun's process group for the block (a no-op in a single process): gloo for CPU
    tensors, plus nccl for CUDA tensors when the run trains on CUDA."""
    global _world
    world = launched()
    if not world.parallel or dist.is_initialized():
        yield _world
        return
    on_cuda = device != "cpu" and torch.cuda.is_available()
    if on_cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("cpu:gloo,cuda:nccl" if on_cuda else "gloo",
                            timeout=datetime.timedelta(minutes=30))
    _world = world
    try:
        yield world
    finally:
        _world = ONE_PROCESS
        dist.destroy_process_group()


class SyncedBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the whole global batch, on CPU (gloo) and CUDA.

    One differentiable all-reduce per layer sums each channel's count, sum and sum of squares.
    Both sums are taken around the running mean, which DDP keeps equal on every rank, so that the
    variance does not lose precision to cancellation. Its backward all-reduces the gradients, so
    the loss is that of one process on the global batch.
    Timm's BatchNormAct2d keeps its activation: `synced` swaps the class, keeping the module.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        out = self._normalize(x)
        if hasattr(self, "drop"):
            out = self.drop(out)
        if hasattr(self, "act"):
            out = self.act(out)
        return out

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        assert self.running_mean is not None and self.running_var is not None
        channels = x.shape[1]
        shift = self.running_mean.detach().view(1, -1, 1, 1)
        centred = x.float() - shift
        local = torch.cat([centred.sum((0, 2, 3)), centred.square().sum((0, 2, 3)),
                           centred.new_full((1,), x.numel() / channels)])
        total = _SumOverRanks.apply(local)
        count = total[-1].detach()
        offset = total[:channels] / count
        var = total[channels:2 * channels] / count - offset.square()
        mean = shift.flatten() + offset
        self._update_running_stats(mean.detach(), var.detach(), count)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        out = (x.float() - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out.to(x.dtype)

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor,
                              count: torch.Tensor) -> None:
        """As nn.BatchNorm2d does: unbiased variance, momentum (or a cumulative average)."""
        assert self.running_mean is not None and self.running_var is not None
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        factor = (self.momentum if self.momentum is not None
                  else 1.0 / float(self.num_batches_tracked or 1))
        unbiased = var * (count / (count - 1).clamp(min=1))  # a tensor: no host sync on CUDA
        with torch.no_grad():
            self.running_mean.lerp_(mean, factor)
            self.running_var.lerp_(unbiased, factor)


class _SumOverRanks(torch.autograd.Function):
    """The sum over ranks, differentiable: the gradient of a sum over ranks is the sum over ranks
    of the gradients (each rank's loss depends on every rank's statistics)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def synced(model: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d (timm's BatchNormAct2d included) for its SyncedBatchNorm version,
    in place: parameters, buffers and state-dict keys stay as they are."""
    for module in model.modules():
        cls = type(module)
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncedBatchNorm):
            module.__class__ = _synced_class(cls)
    return model


_SYNCED: dict[type, type] = {}


def _synced_class(cls: type) -> type:
    if cls not in _SYNCED:
        _SYNCED[cls] = type(f"Synced{cls.__name__}", (SyncedBatchNorm, cls), {})
    return _SYNCED[cls]
