"""Where a stage computes: the device, mixed precision, and this process's place in a
torchrun job. Shared by extraction (:mod:`featstore.extract.engine`) and finetuning
(:mod:`featstore.finetune.run`), so both read ``--device`` and torchrun's environment alike."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featstore.errors import FeatstoreError
from featstore.options import device_problem, refused

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                                  "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` (``fp32``: none) on ``device``."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA device when present, else CPU.

    Raises
    ------
    FeatstoreError
        An unknown device, or one this machine lacks (:func:`featstore.options.device_problem`,
        the check every front end runs).
    """
    problem = device_problem(device)
    if problem is not None:
        raise refused(FeatstoreError, "device", device, problem)
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def gather(self, part: np.ndarray) -> np.ndarray:
        """The ranks' parts, concatenated in rank order, on every rank."""
        if not self.active:
            return part
        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, part)
        return np.concatenate(parts)

    def total(self, *values: float) -> list[float]:
        """Sums over the ranks."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        """Leave the process group this process made (one a caller made stays)."""
        if self.owns_group:
            torch.distributed.destroy_process_group()


def distributed_from_env(device: str = "auto") -> Distributed:
    """Join the torchrun job described by the environment (``WORLD_SIZE``, ``RANK``, ...).

    Uses an already initialised process group when there is one; otherwise initialises one
    (NCCL on GPUs, gloo on CPUs) when ``WORLD_SIZE`` > 1, each rank on its local GPU.
    """
    import torch.distributed as td

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if td.is_available() and td.is_initialized():
        return Distributed(td.get_rank(), td.get_world_size(), local_rank, True, False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    gpu = device != "cpu" and not device.startswith("cpu") and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(local_rank)
    td.init_process_group("nccl" if gpu else "gloo")
    return Distributed(td.get_rank(), td.get_world_size(), local_rank, True, True)
