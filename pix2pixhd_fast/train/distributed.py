"""torchrun / DistributedDataParallel set-up: one process per device, gloo on CPU, nccl on CUDA."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "is_torchrun", "host_group", "agree_max"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_torchrun() -> bool:
    """True when launched by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (env:// rendezvous); a single process otherwise.

    Backend: nccl for CUDA, gloo for CPU. Each CUDA process uses the device ``cuda:<LOCAL_RANK>``.
    """
    if not is_torchrun():
        return DistInfo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world <= 1:
        return DistInfo(rank, world, local)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        with _signals_to_main_thread():
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local)


@contextlib.contextmanager
def _signals_to_main_thread():
    """Threads started inside start with SIGINT and SIGTERM blocked (threads inherit the mask of their creator).

    A process group starts I/O threads; a Ctrl-C that the kernel delivered to one of them would interrupt its
    system calls instead of reaching the main thread, where Python runs the trainer's handler.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def host_group(info: DistInfo):
    """A process group for small host-side agreements (a gloo group beside nccl; the default group under gloo).

    Collective: every rank must call it, in the same order. None for a single process.
    """
    if not info.enabled:
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    with _signals_to_main_thread():
        return dist.new_group(backend="gloo")


def agree_max(value: int, info: DistInfo, group) -> int:
    """The largest ``value`` over all ranks (``value`` itself for a single process).

    A CPU all-reduce over ``group`` (see :func:`host_group`): it waits for the other ranks, never for the GPU,
    so queued kernels keep running while the ranks agree.
    """
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())
