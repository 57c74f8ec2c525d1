"""The storage formats of ``model.base_precision``: bytes per weight and what each needs.

The engine's quantizers (:mod:`loratui.memory.stored`) store each frozen Linear
weight exactly as described here, and the planner counts bytes with the same numbers; a test measures the
stored tensors against :func:`stored_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BasePrecision:
    name: str
    bits: int                 # payload bits per weight
    group: int | None         # weights sharing one scale; None: one scale per output row
    scale_bytes: int          # bytes of scale (and zero point) per group or row
    library: str | None       # the optional package that implements it, if any
    cuda_only: bool
    # relative step time against bf16 on a GPU, for the planner's ordering (measured by benchmarks/gpu.py)
    relative_speed: float


PRECISIONS: dict[str, BasePrecision] = {p.name: p for p in (
    BasePrecision("bf16", 16, None, 0, None, False, 1.0),
    BasePrecision("fp8", 8, None, 0, None, False, 1.05),
    BasePrecision("fp8-scaled", 8, 128, 4, None, False, 1.1),
    BasePrecision("int8", 8, None, 2, None, False, 1.15),
    BasePrecision("int4", 4, 128, 4, None, False, 1.3),
    BasePrecision("nf4", 4, 64, 4, "bitsandbytes", True, 1.3),
)}


def stored_bytes(precision: str, out_features: int, in_features: int) -> int:
    """Bytes one frozen ``out × in`` Linear weight takes when stored as ``precision``."""
    p = PRECISIONS[precision]
    weights = out_features * in_features
    payload = -(-weights * p.bits // 8)  # an odd count of 4-bit weights still fills its last byte
    if p.scale_bytes == 0:
        return payload
    if p.group is None:
        return payload + out_features * p.scale_bytes
    groups = -(-weights // p.group)
    return payload + groups * p.scale_bytes
