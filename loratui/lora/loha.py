"""LoHa: the update is the elementwise (Hadamard) product of two low-rank products.

``ΔW = (alpha / rank) · (w1_a @ w1_b) ⊙ (w2_a @ w2_b)``, with ``w?_a`` of
shape ``[out, rank]`` and ``w?_b`` of ``[rank, in·kh·kw]``, reshaped to the
base weight. File keys are LyCORIS': ``hada_w1_a``, ``hada_w1_b``,
``hada_w2_a``, ``hada_w2_b`` and ``alpha``. The product of two rank-r
matrices can reach rank r², so LoHa fits more than a LoRA of the same size.
Initialisation follows LyCORIS: ``w2_a`` is zero, so training starts from the
base model, and the others are normal (std 1 for the ``b`` factors, 0.1 for
``w1_a``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from loratui.lora.layer import LORA_DTYPE, AdapterModule, normal_init_


class LoHaModule(AdapterModule):
    kind: ClassVar[str] = "loha"

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None, *,
                 generator: torch.Generator | None = None) -> None:  # fmt: skip
        super().__init__(base, rank, alpha)
        weight = base.weight
        out_dim, fan_in = weight.shape[0], weight[0].numel()

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(shape, device=weight.device, dtype=LORA_DTYPE))

        self.hada_w1_a = param(out_dim, rank)
        self.hada_w1_b = param(rank, fan_in)
        self.hada_w2_a = param(out_dim, rank)
        self.hada_w2_b = param(rank, fan_in)
        normal_init_(self.hada_w1_a, 0.1, generator)
        normal_init_(self.hada_w1_b, 1.0, generator)
        normal_init_(self.hada_w2_b, 1.0, generator)
        # hada_w2_a stays zero: the product is zero at the start.

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {"hada_w1_a": self.hada_w1_a, "hada_w1_b": self.hada_w1_b,
                "hada_w2_a": self.hada_w2_a, "hada_w2_b": self.hada_w2_b}  # fmt: skip

    def delta_weight(self) -> torch.Tensor:
        product = (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b)
        return (product * self.scale).reshape(self.base.weight.shape)
