"""Running under ``torchrun``: which device and rank this process has, its process group, gathering reports.

Sharding is :func:`dense.extract.extract_to_cache`'s: rank r takes ``sorted(keys)[r::N]``; this module only says what r
and N are and which GPU rank r computes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from dense.device import resolve_device
from dense.errors import InputError


@dataclass(frozen=True)
class DistPlan:
    """How this process takes part in a ``torchrun`` job: ``device`` it computes on, ``backend`` of its group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None  # None: a single process, no group


def plan_distributed(device: str, env=None) -> DistPlan:
    """The plan for ``device`` under the launcher's environment ``env`` (default ``os.environ``).

    Under ``WORLD_SIZE > 1`` a CUDA device becomes ``cuda:<LOCAL_RANK>`` (each rank its own GPU; ``cuda:N`` is
    overridden, since every rank would otherwise pile onto one GPU), and the group is gloo: the only collective is the
    gather of small reports, so it runs on the CPU and needs no NCCL."""
    env = os.environ if env is None else env
    device = str(device)
    world = int(env.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistPlan(device=device)
    if "RANK" not in env or "LOCAL_RANK" not in env:
        raise InputError(f"WORLD_SIZE={world} without RANK and LOCAL_RANK: launch with torchrun")
    rank, local = int(env["RANK"]), int(env["LOCAL_RANK"])
    if device.startswith("cuda"):
        device = f"cuda:{local}"
    return DistPlan(rank=rank, world_size=world, local_rank=local, device=device, backend="gloo")


def init_distributed(plan: DistPlan, *, set_device=None, init_group=None) -> bool:
    """Select the plan's CUDA device, THEN join the process group (so no collective ever runs on another rank's GPU).
    Returns whether a group was created here (destroy it when done). ``set_device``/``init_group`` default to
    ``torch.cuda.set_device`` / ``torch.distributed.init_process_group`` (tests pass recorders)."""
    import torch.distributed as dist

    if plan.device.startswith("cuda"):
        (set_device or torch.cuda.set_device)(resolve_device(plan.device))  # "cuda" -> cuda:<current>
    if plan.backend is None or dist.is_initialized():
        return False
    (init_group or dist.init_process_group)(plan.backend)
    return True


def gather_reports(report, plan: DistPlan) -> list:
    """Every rank's report on every rank (a gloo object gather: CPU only), or ``[report]`` without a group."""
    import torch.distributed as dist

    if plan.world_size <= 1 or not dist.is_initialized():
        return [report]
    out = [None] * plan.world_size
    dist.all_gather_object(out, report)
    return out


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised ``torch.distributed`` group, else from ``RANK`` / ``WORLD_SIZE``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
