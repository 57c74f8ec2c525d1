"""The one definition of "smoothed loss", shared by the dashboard, the headless console and `status`.

Diffusion loss is noisy (it depends on the timestep drawn), so it is smoothed hard: an
exponential moving average with beta 0.98, bias-corrected so the first steps are not
pulled towards zero. Non-finite losses (skipped steps) leave it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

EMA_BETA = 0.98
"""Weight of the past in the smoothed loss; about the last 50 steps count."""


class LossSmoother:
    """Bias-corrected EMA of the loss, fed one step at a time."""

    def __init__(self, beta: float = EMA_BETA) -> None:
        self.beta = beta
        self._raw = 0.0
        self._count = 0

    def update(self, loss: float) -> float:
        if math.isfinite(loss):
            self._raw = self.beta * self._raw + (1 - self.beta) * loss
            self._count += 1
        return self.value

    @property
    def value(self) -> float:
        """The smoothed loss so far; NaN before the first finite loss."""
        if not self._count:
            return math.nan
        return self._raw / (1 - self.beta ** self._count)


def smoothed_series(losses: Iterable[float]) -> list[float]:
    """The smoothed loss after each step of ``losses``."""
    smoother = LossSmoother()
    return [smoother.update(v) for v in losses]
