"""The repeated blocks of a diffusers transformer, in the order its forward runs them.

diffusers names each transformer's block classes in ``_repeated_blocks`` (or
``_no_split_modules``): FLUX.1's double and single blocks, SD3's joint blocks,
Qwen-Image's and Z-Image's blocks. Reading that list keeps the memory options
free of per-family code; a family whose blocks are registered out of forward
order still trains correctly under block swapping, only with less overlap.
"""

from __future__ import annotations

from torch import nn


def block_class_names(transformer: nn.Module) -> tuple[str, ...]:
    names = getattr(type(transformer), "_repeated_blocks", None) or getattr(type(transformer), "_no_split_modules",
                                                                             None)
    return tuple(names or ())


def transformer_blocks(transformer: nn.Module) -> list[nn.Module]:
    """Every repeated block of ``transformer``, in registration order; empty for a UNet."""
    names = block_class_names(transformer)
    if not names or type(transformer).__name__.startswith("UNet"):
        return []
    return [m for m in transformer.modules() if type(m).__name__ in names]
