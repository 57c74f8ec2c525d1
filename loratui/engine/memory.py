"""Memory readings for the dashboard: process RAM and, on CUDA, allocator figures."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MemorySnapshot:
    ram_mb: float
    gpu_alloc_mb: float | None = None
    gpu_peak_mb: float | None = None


def _rss_mb() -> float:
    # /proc gives the current resident size; getrusage only the peak. Use the former where it exists.
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_snapshot(device: torch.device) -> MemorySnapshot:
    if device.type == "cuda":
        return MemorySnapshot(_rss_mb(), torch.cuda.memory_allocated(device) / 2**20,
                              torch.cuda.max_memory_allocated(device) / 2**20)
    return MemorySnapshot(_rss_mb())
