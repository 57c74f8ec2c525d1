"""Memory readings for the dashboard: process RAM and, on CUDA, allocator figures.

Read after every optimizer step, so each reading is kept to one cheap call:
``torch.cuda.memory_allocated`` and ``max_memory_allocated`` each flatten the
allocator's whole statistics tree in Python, while the nested form gives both
figures from one call.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import torch

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 0.0


@dataclass(frozen=True)
class MemorySnapshot:
    ram_mb: float
    gpu_alloc_mb: float | None = None
    gpu_peak_mb: float | None = None


def _rss_mb() -> float:
    # /proc gives the current resident size; getrusage only the peak. Use the former where it exists.
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * _PAGE_MB
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_snapshot(device: torch.device) -> MemorySnapshot:
    if device.type == "cuda":
        allocated = torch.cuda.memory_stats_as_nested_dict(device).get("allocated_bytes", {}).get("all", {})
        return MemorySnapshot(_rss_mb(), allocated.get("current", 0) / 2**20, allocated.get("peak", 0) / 2**20)
    return MemorySnapshot(_rss_mb())
