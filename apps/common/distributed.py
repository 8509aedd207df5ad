"""One training across processes with ``torch.distributed``: ``torchrun --nproc-per-node N -m apps.NAME train``.

:func:`start` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and joins the process group:
backend nccl when the run's device is CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPUs. The training
loop (:mod:`apps.common.engine`) then shards the training images with a ``DistributedSampler`` (``train.batch_size``
stays the global batch), trains the method's torch model through ``DistributedDataParallel`` (gradients averaged
over the processes) with batch norms that use the whole global batch (:func:`sync_batchnorms`), and lets rank 0
alone write the run folder. Without torchrun nothing here does anything: one process is world 1, rank 0
(``torchrun --nproc-per-node 1`` trains through the same DistributedDataParallel path as several processes do).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ssmad.core import ConfigError

#: how long a process waits for the others at a collective: rank 0 alone fits the statistics after training and
#: scores the epochs for ``train.select = "best"`` while the others wait
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """The processes of one training: ``size`` processes, this one ``rank`` (``local_rank`` on its machine)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    #: whether the processes form a process group (torchrun launched them, even one): then the model trains
    #: through DistributedDataParallel
    grouped: bool = False

    @property
    def distributed(self) -> bool:
        return self.grouped

    @property
    def main(self) -> bool:
        """Whether this process writes the run folder and prints (rank 0)."""
        return self.rank == 0


def world() -> World:
    """The processes of this training as the process group has them (world 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                     True)
    return World()


def is_main() -> bool:
    """True except in the processes of rank > 0 of a distributed training."""
    return world().main


def launched() -> World:
    """The world torchrun describes in the environment (``WORLD_SIZE`` and ``RANK`` set; ``grouped``), else world
    1; a ConfigError for values that are not integers."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return World()
    try:
        size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    return World(size, rank, local, True)


def start(device: torch.device, requested: str) -> torch.device:
    """Join the process group torchrun launched this process in (nothing without torchrun) and return the device
    of this process: ``cuda:LOCAL_RANK`` when ``device`` is CUDA, else the CPU. ``requested``: the ``--device`` the
    user gave (a CUDA index is one device for several processes: a ConfigError)."""
    w = launched()
    if not w.grouped:
        return device
    if not dist.is_available():
        raise ConfigError("torchrun: this build of torch has no torch.distributed")
    if device.type == "cuda":
        if ":" in requested:
            raise ConfigError(f"--device {requested}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                              f"give --device cuda or auto (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
        if w.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun: process {w.local_rank} on this machine has no GPU of its own "
                              f"({torch.cuda.device_count()} visible); start at most that many processes")
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def backend() -> str:
    """The process group's backend ("gloo", "nccl"), or "none"."""
    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else "none"


def finish() -> None:
    """Leave the process group :func:`start` joined (nothing when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object; as it is without a process group)."""
    if world().size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself in one process): ranks agree to stop together."""
    if not world().distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the ranks (the same keys on every rank; ``values`` itself in one process)."""
    if not world().distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / world().size for k, v in zip(keys, t.tolist())}


class _SumOverRanks(torch.autograd.Function):
    """``Σ_ranks x`` with its gradient: each rank's input feeds every rank's output, so the gradient of each input is
    the sum of the output gradients of all ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``x`` over the ranks (``x`` itself in one process)."""
    return _SumOverRanks.apply(x) if world().distributed else x


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, biased variance, count) per channel of an N×C×… batch over the global batch of all ranks (two passes:
    the mean first, then the squared deviations from it), differentiable."""
    dims = [0, *range(2, x.dim())]
    count = x.numel() // x.shape[1] * world().size
    mean = sum_over_ranks(x.sum(dims)) / count
    shape = [1, -1] + [1] * (x.dim() - 2)
    var = sum_over_ranks(((x - mean.view(shape)) ** 2).sum(dims)) / count
    return mean, var, count


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A batch norm whose training statistics are those of the global batch of all ranks, on any device (torch's
    ``SyncBatchNorm`` runs on GPUs only). Outside a distributed training, and in eval mode, it is the batch norm it
    replaces; its state (weight, bias, running statistics) has the same keys."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm: expected at least 2 dimensions, got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world().distributed):
            return super().forward(x)
        mean, var, count = batch_moments(x.float())
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / max(count - 1, 1), alpha=m)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorms(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with each trainable part's batch norms computing their statistics over the global batch: torch's
    ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` elsewhere. The parameters and buffers are the same objects
    (an optimizer made before still holds them)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats, device=device)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorms(child, device)
    return module


def data_parallel(model: nn.Module, trainable: list[nn.Parameter], device: torch.device) -> nn.Module:
    """``model`` (the method's torch model) as a ``DistributedDataParallel`` over the ranks: the parameters not in
    ``trainable`` are frozen first (DDP all-reduces the gradients of every parameter that requires one), the batch
    norms compute global statistics in training mode. Buffers are not broadcast at every step: the frozen
    networks' are equal on every rank, and the global batch norms keep theirs equal."""
    from torch.nn.parallel import DistributedDataParallel

    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    sync_batchnorms(model, device)   # the frozen networks' run in eval mode, where a global batch norm is a plain one
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

