"""Frozen base weights stored in float8 and computed in bf16 (``model.base_weights = "float8"``).

FLUX.1-dev has 12 B parameters: 24 GB in bf16, more than a 24 GB card has
left once activations and the LoRA's optimizer state are counted. The frozen
linear layers of the transformer's blocks hold almost all of them; stored as
float8 (e4m3, as sd-scripts' ``fp8_base`` does: a plain cast, no scaling)
they take half the memory, and each is cast back to bf16 just for its own
matmul, so nothing else in the model changes. The LoRA factors around them
stay float32 and train as before; only the frozen product is rounded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STORAGE_DTYPE = torch.float8_e4m3fn
COMPUTE_DTYPE = torch.bfloat16


class Float8Linear(nn.Linear):
    """A frozen nn.Linear whose weight lives in float8 and is used in bf16."""

    compute_dtype: torch.dtype = COMPUTE_DTYPE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(self.compute_dtype) if self.bias is not None else None
        out = F.linear(x.to(self.compute_dtype), self.weight.to(self.compute_dtype), bias)
        return out.to(x.dtype)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # model.to(bfloat16) must not undo the storage format: keep the weight in float8.
        super()._apply(fn, recurse)
        if self.weight.dtype != STORAGE_DTYPE:
            self.weight.data = self.weight.data.to(STORAGE_DTYPE)
        return self


def store_blocks_in_float8(transformer: nn.Module) -> int:
    """Turn every frozen Linear inside the transformer's blocks into a Float8Linear; returns how many bytes
    that saved. Embeddings, norms and the final layer stay as they are (small, and sensitive to rounding)."""
    from loratui.lora.transformer_names import BLOCK_LISTS

    saved = 0
    for list_name in BLOCK_LISTS:
        blocks = getattr(transformer, list_name, None)
        if blocks is None:
            continue
        for module in blocks.modules():
            if type(module) is not nn.Linear:
                continue
            before = module.weight.numel() * module.weight.element_size()
            module.weight.requires_grad_(False)
            module.weight.data = module.weight.data.to(STORAGE_DTYPE)
            module.__class__ = Float8Linear
            saved += before - module.weight.numel() * module.weight.element_size()
    return saved
