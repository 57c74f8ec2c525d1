"""LoKr: the update is a Kronecker product of a small full matrix and a (low-rank) larger one.

Each dimension is split into two factors (``out = a·b``, ``in = c·d``) as
LyCORIS splits it (:func:`factorization`), and
``ΔW = scale · kron(w1, w2)`` with ``w1`` ``[a, c]`` and ``w2`` ``[b, d(·kh·kw)]``.
``w2`` is stored as ``lokr_w2_a @ lokr_w2_b`` (``[b, rank]``, ``[rank, d·kh·kw]``)
when the rank is below half its larger side, else as the full ``lokr_w2``
(``[b, d, kh, kw]`` for a convolution), exactly as LyCORIS decides; ``w1`` is
always the full ``lokr_w1``. ``scale`` is ``alpha / rank``, except that with
both factors full every loader uses 1, so ``alpha`` is then stored equal to
the rank. Initialisation follows LyCORIS: ``w1`` and ``w2_a`` kaiming-uniform,
``w2_b`` (or the full ``w2``) zero.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from loratui.lora.layer import LORA_DTYPE, AdapterModule, uniform_init_


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)``, ``m <= n``, ``m·n = dimension``, as LyCORIS does.

    ``factor > 0`` dividing the dimension gives ``(factor, dimension/factor)``
    (sorted); otherwise the divisor pair closest to a square with the smaller
    side at most ``factor`` (any size when ``factor <= 0``).
    """
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    limit = dimension if factor <= 0 else factor
    best = (1, dimension)
    for m in range(1, int(dimension**0.5) + 1):
        if dimension % m == 0 and m <= limit:
            best = (m, dimension // m)
    return best


class LoKrModule(AdapterModule):
    kind: ClassVar[str] = "lokr"

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None, *, factor: int = -1,
                 generator: torch.Generator | None = None, w1_shape: tuple[int, int] | None = None,
                 full_w2: bool | None = None) -> None:  # fmt: skip
        """``w1_shape``/``full_w2`` override the layout (to read a file made with another factor)."""
        weight = base.weight
        out_dim, in_dim, *kernel = weight.shape
        if w1_shape is None:
            w1_shape = (factorization(out_dim, factor)[0], factorization(in_dim, factor)[0])
        a, c = w1_shape
        if out_dim % a or in_dim % c:
            raise ValueError(f"LoKr factor shape {w1_shape} does not divide the layer's weight {tuple(weight.shape)}")
        b, d = out_dim // a, in_dim // c
        if full_w2 is None:
            full_w2 = rank >= max(b, d) / 2
        # Both factors full: loaders apply scale 1, so alpha is stored as the rank.
        super().__init__(base, rank, float(rank) if full_w2 else alpha)
        self.full_w2 = bool(full_w2)

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(shape, device=weight.device, dtype=LORA_DTYPE))

        self.lokr_w1 = param(a, c)
        uniform_init_(self.lokr_w1, generator)
        if self.full_w2:
            self.lokr_w2 = param(b, d, *kernel)
        else:
            window = 1
            for k in kernel:
                window *= k
            self.lokr_w2_a = param(b, rank)
            self.lokr_w2_b = param(rank, d * window)
            uniform_init_(self.lokr_w2_a, generator)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        if self.full_w2:
            return {"lokr_w1": self.lokr_w1, "lokr_w2": self.lokr_w2}
        return {"lokr_w1": self.lokr_w1, "lokr_w2_a": self.lokr_w2_a, "lokr_w2_b": self.lokr_w2_b}

    @property
    def scale(self) -> float:
        return 1.0 if self.full_w2 else float(self.alpha) / self.rank

    def delta_weight(self) -> torch.Tensor:
        shape = self.base.weight.shape
        if self.full_w2:
            w2 = self.lokr_w2
            w1 = self.lokr_w1.reshape(*self.lokr_w1.shape, *[1] * (w2.dim() - 2))
        else:
            w2 = self.lokr_w2_a @ self.lokr_w2_b
            w1 = self.lokr_w1
        return (torch.kron(w1, w2) * self.scale).reshape(shape)

    def extra_repr(self) -> str:
        layout = "full w2" if self.full_w2 else f"w2 rank {self.rank}"
        return f"{super().extra_repr()}, w1={tuple(self.lokr_w1.shape)}, {layout}"
