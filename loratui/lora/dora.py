"""DoRA: a LoRA whose update is re-normalised to a trained magnitude (weight decomposition).

``W' = m · (W + s·up·down) / ‖W + s·up·down‖`` with the norm taken per
*input* column, over the output rows and the kernel window: for a Linear
``[out, in]`` weight, ``m`` (the file's ``dora_scale``) is ``[1, in]``; for a
Conv2d ``[out, in, kh, kw]`` weight it is ``[1, in, 1, 1]``. ``m`` starts as
the base weight's own column norms, so the wrapped layer starts as the base.

Why the input axis: it is the DoRA paper's column norm, what LyCORIS writes
with ``wd_on_output=False`` and what OneTrainer writes, and it is the one
convention ComfyUI and Forge apply exactly — for an output-axis
``dora_scale`` (LyCORIS' default ``[out, 1]``) they divide by the norm of the
*unmodified* weight, so such a file gives another result there than in the
trainer. The tensors are kohya's ``lora_down``/``lora_up``/``alpha`` plus
``dora_scale``; loaders that know no DoRA (diffusers) drop ``dora_scale``.

Files with LyCORIS' output-axis ``dora_scale`` are read and applied as
LyCORIS computes them (``wd_on_output``); loratui itself trains the input axis.

Strength follows ComfyUI: ``W + multiplier · (W' − W)``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from loratui.lora.layer import LORA_DTYPE, AdapterModule, LoRAModule


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖W‖ per input channel, shaped to broadcast against W: ``[1, in]`` or ``[1, in, 1, 1]``."""
    flat = weight.transpose(0, 1).reshape(weight.shape[1], -1)
    return flat.norm(dim=1).reshape(1, weight.shape[1], *[1] * (weight.dim() - 2))


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖W‖ per output channel (LyCORIS' default axis): ``[out, 1]`` or ``[out, 1, 1, 1]``."""
    return weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *[1] * (weight.dim() - 1))


class DoRAModule(LoRAModule):
    """LoRA factors plus a trained per-input-channel magnitude ``dora_scale``."""

    kind: ClassVar[str] = "dora"

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None, *,
                 generator: torch.Generator | None = None, wd_on_output: bool = False) -> None:  # fmt: skip
        """``wd_on_output`` only to read a file with LyCORIS' default output-axis magnitude."""
        super().__init__(base, rank, alpha, generator=generator)
        weight = base.weight
        self.norm = row_norm if wd_on_output else column_norm
        shape = (weight.shape[0], 1) if wd_on_output else (1, weight.shape[1])
        magnitude = torch.empty((*shape, *[1] * (weight.dim() - 2)), device=weight.device, dtype=LORA_DTYPE)
        if not weight.is_meta:
            with torch.no_grad():
                magnitude.copy_(self.norm(weight.detach().to(LORA_DTYPE)))
        self.dora_scale = nn.Parameter(magnitude)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {**super().adapter_parameters(), "dora_scale": self.dora_scale}

    def delta_weight(self) -> torch.Tensor:
        """``W' − W`` at multiplier 1 (float32); depends on the current base weight."""
        weight = self.base.weight.to(LORA_DTYPE)
        combined = weight + self.low_rank_weight() * self.scale
        # eps as LyCORIS and ComfyUI add it, so a zero column stays finite.
        norm = self.norm(combined) + torch.finfo(LORA_DTYPE).eps
        return combined * (self.dora_scale / norm) - weight

    # The LoRA bypass forward does not apply here: the rescaling acts on the
    # whole weight, so AdapterModule's weight-space forward is used.
    forward = AdapterModule.forward
