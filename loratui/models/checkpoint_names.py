"""What the transformers' original-layout checkpoints (FLUX's, SD3's) share when renamed from diffusers.

Both keep a few top-level layers under other names, store the final
adaptive norm's modulation as (shift, scale) where diffusers keeps (scale,
shift), and fuse diffusers' separate q, k, v into one ``qkv`` weight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(shift, scale) <-> (scale, shift): the two layouts order an adaptive norm's modulation oppositely."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def place_renamed(key: str, tensor: torch.Tensor, table: Mapping[str, str], swapped: frozenset[str] | set[str],
                  out: dict[str, torch.Tensor]) -> bool:
    """Put one tensor under its other-layout name if its module is in ``table``; False when it is not.

    ``swapped``: the modules (in the source layout) whose modulation halves change order on the way.
    """
    module, _, kind = key.rpartition(".")
    if module not in table:
        return False
    out[f"{table[module]}.{kind}"] = swap_halves(tensor) if module in swapped else tensor
    return True


def fuse_rows(fused: Mapping[str, Mapping[str, torch.Tensor]],
              order_of: Callable[[str], Sequence[str]]) -> dict[str, torch.Tensor]:
    """Each fused weight (``name.kind`` -> its parts by source module) as the parts' rows stacked in the
    order ``order_of(name)`` gives; a missing or unexpected part is an error, never a short weight."""
    out: dict[str, torch.Tensor] = {}
    for key, parts in fused.items():
        wanted = list(order_of(key.rpartition(".")[0]))
        if set(parts) != set(wanted):
            raise ValueError(f"checkpoint tensor {key} needs {wanted}, the model has {sorted(parts)}")
        out[key] = torch.cat([parts[p] for p in wanted], dim=0)
    return out
