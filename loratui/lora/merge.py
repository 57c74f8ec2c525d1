"""Fold LoRA updates into the base weights (``loratui export --merge``) and take them out again."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from loratui.lora.layer import AdapterModule, LoRANetwork


def _modules(networks: Mapping[str, LoRANetwork] | Iterable[LoRANetwork]) -> list[AdapterModule]:
    items = networks.values() if isinstance(networks, Mapping) else networks
    return [module for network in items for module in network.values()]


# DoRA's update depends on the base weight it is added to, so once merged it
# cannot be recomputed from the merged weight; what was added is kept to take out.
_MERGED = "_merged_delta"


@torch.no_grad()
def _add(networks: Mapping[str, LoRANetwork] | Iterable[LoRANetwork], scale: float, *, undo: bool = False) -> None:
    for module in _modules(networks):
        weight = module.base.weight
        kept = getattr(module, _MERGED, None)
        if undo and kept is not None:
            delta = -kept
            setattr(module, _MERGED, None)
        else:
            # Sum in float32, then round once to the base dtype: adding a small
            # delta directly to fp16 weights loses most of it.
            delta = module.delta_weight().to(device=weight.device, dtype=torch.float32) * scale
            if not undo and module.kind == "dora":
                setattr(module, _MERGED, delta)
        weight.copy_((weight.float() + delta).to(weight.dtype))


def merge_networks(networks: Mapping[str, LoRANetwork] | Iterable[LoRANetwork], scale: float = 1.0) -> None:
    """Add ``scale`` times each adapter's update (LoRA: ``(alpha/rank) * up @ down``) into its base weight.

    Afterwards the LoRA branch must not run as well, so every multiplier is
    set to 0; the wrapped layers then compute the merged model. Call
    :func:`unmerge_networks` with the same scale to undo.
    """
    _add(networks, scale)
    for module in _modules(networks):
        module.multiplier = 0.0


def unmerge_networks(networks: Mapping[str, LoRANetwork] | Iterable[LoRANetwork], scale: float = 1.0,
                     multiplier: float = 1.0) -> None:  # fmt: skip
    """Subtract what :func:`merge_networks` added and switch the LoRA branch back on.

    Exact for float32 bases; half-precision bases come back within rounding.
    """
    _add(networks, -scale, undo=True)
    for module in _modules(networks):
        module.multiplier = multiplier


def bake_networks(networks: Mapping[str, LoRANetwork] | Iterable[LoRANetwork], scale: float = 1.0) -> None:
    """Merge and take the LoRA wrappers out: the model is a plain model again, with the LoRA in its weights.

    This is what an exported merged model needs: its state dict then has the
    base model's own keys (``...to_q.weight``), ready for ``save_pretrained``.
    The networks are empty afterwards.
    """
    merge_networks(networks, scale)
    items = networks.values() if isinstance(networks, Mapping) else networks
    for network in items:
        network.remove()
