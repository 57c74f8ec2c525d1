"""What a run's status is, built from its own events (inside the run) or its files (after it)."""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from loratui.events import Event, Failed, Finished, Paused, Resumed, Started, StepDone
from loratui.loss_smoothing import LossSmoother

SPEED_WINDOW = 20
"""Steps averaged for it/s and the ETA (as the dashboard does)."""


def read_metric_rows(path: Path, upto_step: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (a half-written last line is skipped)."""
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row.get("event", "step") == "step":
            if upto_step is None or row["step"] <= upto_step:
                rows.append(row)
    return rows


@dataclass
class RunTracker:
    """The run's state machine, fed every event the run emits."""

    metrics_path: Path | None = None
    clock: Callable[[], float] = time.time
    state: str = "starting"
    step: int = 0
    total_steps: int = 0
    last_loss: float = math.nan
    started_at: float = field(default_factory=time.time)
    paused_since: float | None = None
    lora_path: str = ""
    message: str = ""
    smoother: LossSmoother = field(default_factory=LossSmoother)
    _step_times: deque[float] = field(default_factory=lambda: deque(maxlen=SPEED_WINDOW))

    def apply(self, event: Event) -> None:
        if isinstance(event, Started):
            self.state, self.step, self.total_steps = "training", event.start_step, event.total_steps
            self.smoother = LossSmoother()
            if event.start_step and self.metrics_path is not None:
                # A resumed run: its smoothed loss continues from the steps already on disk.
                for row in read_metric_rows(self.metrics_path, event.start_step):
                    self.smoother.update(float(row.get("loss", math.nan)))
        elif isinstance(event, StepDone):
            self.step, self.total_steps, self.last_loss = event.step, event.total_steps, event.loss
            self.smoother.update(event.loss)
            self._step_times.append(event.step_time_s)
            if self.state == "starting":
                self.state = "training"
        elif isinstance(event, Paused):
            self.state, self.paused_since = "paused", self.clock()
        elif isinstance(event, Resumed):
            self.state, self.paused_since = "training", None
        elif isinstance(event, Finished):
            self.state, self.step = event.outcome, event.step
            self.lora_path = event.lora_path or ""
            self.paused_since = None
        elif isinstance(event, Failed):
            self.state, self.message = "failed", event.message
            if event.step is not None:
                self.step = event.step
            self.paused_since = None

    def iterations_per_s(self) -> float | None:
        if not self._step_times:
            return None
        mean = sum(self._step_times) / len(self._step_times)
        return 1.0 / mean if mean > 0 else None

    def eta_s(self) -> float | None:
        speed = self.iterations_per_s()
        if speed is None or not self.total_steps or self.state not in ("training", "paused", "stopping"):
            return None
        return max(self.total_steps - self.step, 0) / speed

    def snapshot(self) -> dict[str, Any]:
        loss = self.smoother.value
        return {
            "state": self.state, "step": self.step, "total_steps": self.total_steps,
            "loss": None if math.isnan(loss) else loss,
            "last_loss": None if math.isnan(self.last_loss) else self.last_loss,
            "it_s": self.iterations_per_s(), "eta_s": self.eta_s(), "started_at": self.started_at,
            "paused_s": (self.clock() - self.paused_since) if self.paused_since is not None else None,
            "lora_path": self.lora_path or None, "message": self.message or None,
        }
