"""The loss of every step of a run, with its exponential moving average.

This is the data behind the sparkline and the plot. It keeps every point (a
plot may thin them out for drawing, the history never does) and can be
rebuilt from ``logs/metrics.jsonl`` when a project is reopened.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from loratui.events import StepDone, ValidationDone, event_from_dict
from loratui.loss_smoothing import LossSmoother


@dataclass
class LossHistory:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    ema: list[float] = field(default_factory=list)
    """The smoothed loss (loratui.loss_smoothing) after each step."""
    _smoother: LossSmoother = field(default_factory=LossSmoother)

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, loss: float) -> None:
        if self.steps and step <= self.steps[-1]:
            # A resumed run repeats the steps after its checkpoint: the new values replace the old.
            self.truncate_after(step - 1)
        self.steps.append(step)
        self.losses.append(loss)
        self.ema.append(self._smoother.update(loss))

    def truncate_after(self, step: int) -> None:
        """Forget every point after ``step`` (the EMA is recomputed from what stays)."""
        keep = bisect.bisect_right(self.steps, step)
        if keep == len(self.steps):
            return
        steps, losses = self.steps[:keep], self.losses[:keep]
        self.steps, self.losses, self.ema = [], [], []
        self._smoother = LossSmoother()
        for s, v in zip(steps, losses):
            self.add(s, v)

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    @property
    def smoothed(self) -> float | None:
        return self.ema[-1] if self.ema else None

    def recent(self, count: int) -> list[float]:
        """The last ``count`` finite losses, for the sparkline."""
        return [v for v in self.losses[-count:] if math.isfinite(v)]


def read_metrics(path: Path) -> list[StepDone]:
    """Every step row of a metrics.jsonl; a torn last line (a killed run) is skipped."""
    rows: list[StepDone] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return rows
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or data.get("event", "step") != "step":
            continue
        data.setdefault("event", "step")
        try:
            event = event_from_dict(data)
        except (TypeError, KeyError):
            continue
        if isinstance(event, StepDone):
            rows.append(event)
    return rows


def history_from_rows(rows: list[StepDone]) -> LossHistory:
    history = LossHistory()
    for row in rows:
        history.add(row.step, float(row.loss))
    return history


def read_validations(path: Path) -> list[ValidationDone]:
    """The validation rows of a metrics.jsonl (``"event": "validation"``), torn lines skipped."""
    found: list[ValidationDone] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        if '"validation"' not in line:
            continue
        try:
            event = event_from_dict(json.loads(line))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if isinstance(event, ValidationDone):
            found.append(event)
    return found
