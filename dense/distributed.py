"""Running under ``torchrun``: which device and rank this process has, its process group, gathering small objects.

Sharing the work is :func:`dense.extract.fill_cache`'s (the keys still missing, in turns); this module only says what
the rank and world are, which GPU a rank computes on, and moves small Python objects between ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from dense.device import resolve_device
from dense.errors import DeviceError, InputError, RankFailed

# The group's timeout bounds every collective: a rank waits at most this long for the slowest one (its scan, its
# share). Work is shared evenly, but a slow node or a huge share must never be killed by a deadline (gloo's default
# is 30 minutes); a rank that FAILS says so through the gather instead, and a dead process closes its connections.
GROUP_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class DistPlan:
    """How this process takes part in a ``torchrun`` job: ``device`` it computes on, ``backend`` of its group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None  # None: a single process, no group


def single_process(device: str) -> DistPlan:
    """The plan of a process that works alone (even when a launcher started it)."""
    return DistPlan(device=str(device))


def plan_distributed(device: str, env=None) -> DistPlan:
    """The plan for ``device`` under the launcher's environment ``env`` (default ``os.environ``).

    Under ``WORLD_SIZE > 1`` a CUDA device becomes this rank's GPU: ``cuda:<LOCAL_RANK>`` when the process sees a
    GPU per local rank, ``cuda:0`` when it sees exactly one (a launcher that sets ``CUDA_VISIBLE_DEVICES`` per
    process); ``cuda:N`` is overridden, since every rank would otherwise pile onto one GPU. The group is gloo: the
    only collectives gather small objects, so they run on the CPU and need no NCCL."""
    env = os.environ if env is None else env
    device = str(device)
    world = int(env.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistPlan(device=device)
    if "RANK" not in env or "LOCAL_RANK" not in env:
        raise InputError(f"WORLD_SIZE={world} without RANK and LOCAL_RANK: launch with torchrun")
    rank, local = int(env["RANK"]), int(env["LOCAL_RANK"])
    if device.startswith("cuda"):
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 1:
            device = "cuda:0"
        elif local < visible:
            device = f"cuda:{local}"
        else:
            raise DeviceError(f"LOCAL_RANK={local} but this process sees {visible} GPU(s): start at most one rank "
                              f"per GPU (--nproc-per-node), or give each process one GPU (CUDA_VISIBLE_DEVICES)")
    return DistPlan(rank=rank, world_size=world, local_rank=local, device=device, backend="gloo")


def _init_group(backend: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(backend, timeout=GROUP_TIMEOUT)


def init_distributed(plan: DistPlan, *, set_device=None, init_group=None) -> bool:
    """Select the plan's CUDA device (``torch.cuda.set_device``, so nothing, the DataLoader's pin-memory thread
    included, opens a context on GPU 0), THEN join the process group. Returns whether a group was created here
    (destroy it when done). ``set_device``/``init_group`` default to ``torch.cuda.set_device`` and a gloo
    ``init_process_group`` with :data:`GROUP_TIMEOUT` (tests pass recorders)."""
    import torch.distributed as dist

    if plan.device.startswith("cuda"):
        (set_device or torch.cuda.set_device)(resolve_device(plan.device))  # "cuda" -> cuda:<current>
    if plan.backend is None or dist.is_initialized():
        return False
    (init_group or _init_group)(plan.backend)
    return True


def gather_objects(obj, plan: DistPlan) -> list:
    """Every rank's ``obj`` (small, picklable) on every rank, in rank order; ``[obj]`` without a group."""
    import torch.distributed as dist

    if plan.world_size <= 1 or not dist.is_initialized():
        return [obj]
    out = [None] * plan.world_size
    try:
        dist.all_gather_object(out, obj)
    except RuntimeError as e:  # gloo: "Connection closed by peer ..." when a rank's process died without a word
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RankFailed(f"rank {plan.rank}: another rank of {plan.world_size} stopped without reporting (its "
                         f"process died?): {first}") from e
    return out
