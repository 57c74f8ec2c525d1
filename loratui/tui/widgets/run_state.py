"""What the dashboard knows about a run, built only from engine events.

The screen feeds every event to :meth:`RunState.apply` and then redraws from
this object, so drawing can be throttled without losing anything and the
state can be tested without a terminal.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

from loratui.events import (
    Advice,
    CheckpointSaved,
    Event,
    Failed,
    Finished,
    Paused,
    Resumed,
    SampleReady,
    Started,
    Status,
    StepDone,
    ValidationDone,
)
from loratui.tui.widgets.loss_history import LossHistory

SPEED_WINDOW = 20
"""Steps averaged for it/s and ETA: long enough to hide jitter, short enough to follow a slowdown."""
LOG_LIMIT = 500

PHASES = ("idle", "starting", "training", "pausing", "paused", "stopping", "finished", "failed")


@dataclass
class RunState:
    root: Path | None = None
    """The project folder: paths inside it are shown relative to it."""
    phase: str = "idle"
    started: Started | None = None
    last: StepDone | None = None
    total_steps: int | None = None
    history: LossHistory = field(default_factory=LossHistory)
    checkpoints: list[CheckpointSaved] = field(default_factory=list)
    samples: list[SampleReady] = field(default_factory=list)
    validations: list[ValidationDone] = field(default_factory=list)
    """Validation losses of this run, plotted on the training loss's step axis."""
    best_step: int | None = None
    """The checkpoint with the lowest validation loss (save.keep_best), marked in the list."""
    status: Status | None = None
    finished: Finished | None = None
    failed: Failed | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LIMIT))
    cost_per_hour: float = 0.0
    """What the machine costs (notify.cost_per_hour or $LORATUI_COST_PER_HOUR); 0 shows no cost."""
    loaded_until: float = 0.0
    """Time of the newest step read from metrics.jsonl: events up to it, replayed by a run we attach to,
    are already in the history."""
    _times: deque[tuple[float, float, float, float, float]] = field(
        default_factory=lambda: deque(maxlen=SPEED_WINDOW))

    @property
    def running(self) -> bool:
        """True while the engine is alive and must be stopped before leaving."""
        return self.phase in ("starting", "training", "pausing", "paused", "stopping")

    @property
    def step(self) -> int:
        if self.last is not None:
            return self.last.step
        if self.history.steps:
            return self.history.steps[-1]
        return self.started.start_step if self.started else 0

    def apply(self, event: Event) -> None:
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)

    def load_rows(self, rows: list[StepDone]) -> None:
        """A past run's steps (from metrics.jsonl): history, last numbers and recent speed."""
        from loratui.tui.widgets.loss_history import history_from_rows

        self.history = history_from_rows(rows)
        self._times.clear()
        for row in rows[-SPEED_WINDOW:]:
            self._on_step_times(row)
        if rows:
            self.last, self.total_steps = rows[-1], rows[-1].total_steps
            self.loaded_until = rows[-1].time

    def _on_step_times(self, event: StepDone) -> None:
        self._times.append((event.step_time_s, event.data_time_s, event.compute_time_s,
                            event.optimizer_time_s, event.samples_per_s))

    def _on_started(self, event: Started) -> None:
        self.started = event
        self.total_steps = event.total_steps
        self.phase = "training"
        self.finished = self.failed = None
        self._times.clear()
        if event.time <= self.loaded_until:
            # Replayed on attach: the steps on disk are this run's own; keep them.
            self._log(f"attached: started at step {event.start_step}/{event.total_steps} on {event.device}")
            return
        if event.start_step == 0:
            # A fresh run: what is on disk from an earlier run is not this run's (the engine archives it).
            self.checkpoints, self.samples = [], []
            self.validations, self.best_step = [], None
        self.validations = [v for v in self.validations if v.step <= event.start_step]
        # Steps logged after the checkpoint we resume from are trained again; drop them now
        # so the plot never shows two values for one step.
        self.history.truncate_after(event.start_step)
        where = f" from {display_path(event.resumed_from, self.root)}" if event.resumed_from else ""
        self._log(f"started at step {event.start_step}/{event.total_steps}{where} "
                  f"on {event.device} ({event.family}, {event.precision})")

    def _on_step(self, event: StepDone) -> None:
        self.last = event
        self.total_steps = event.total_steps
        self.history.add(event.step, event.loss)
        self._on_step_times(event)
        if self.phase == "starting":
            self.phase = "training"

    def _on_checkpoint(self, event: CheckpointSaved) -> None:
        # The list shows what can be resumed from: checkpoints pruned by save.keep leave it.
        gone = {Path(p).name for p in event.removed}
        self.checkpoints = [c for c in self.checkpoints
                            if c.step != event.step and Path(c.path).name not in gone] + [event]
        if event.best_step is not None:
            self.best_step = event.best_step
        self._log(f"checkpoint saved at step {event.step} ({event.reason}): "
                  f"{display_path(event.path, self.root)}")

    def _on_sample(self, event: SampleReady) -> None:
        if any(s.path == event.path for s in self.samples):
            return  # replayed on attach, already read from the samples folder
        self.samples.append(event)
        self._log(f"sample at step {event.step}: {display_path(event.path, self.root)}")

    def _on_validation(self, event: ValidationDone) -> None:
        self.validations = [v for v in self.validations if v.step < event.step] + [event]
        self.best_step = event.best_step
        best = "new best" if event.best_step == event.step else \
            f"best {event.best_val_loss:.4f} at step {event.best_step}"
        self._log(f"validation at step {event.step}: {event.val_loss:.4f} ({best}); {event.eval_time_s:.1f} s, "
                  f"{event.cost_share:.1%} of the run")

    def _on_advice(self, event: Advice) -> None:
        self._log(f"advisor: {event.text}")

    def _on_paused(self, event: Paused) -> None:
        self.phase = "paused"
        self._log(f"paused at step {event.step}")

    def _on_resumed(self, event: Resumed) -> None:
        self.phase = "training"
        self._log(f"resumed at step {event.step}")

    def _on_status(self, event: Status) -> None:
        self.status = event
        if event.progress is not None and event.progress < 1:
            return  # "encoding 3/16"-style ticks belong on the status line, not in the log
        text = paths_relative_to(event.text, self.root)
        self._log(f"{event.level}: {text}" if event.level != "info" else text)

    def _on_finished(self, event: Finished) -> None:
        if event.outcome == "aborted":
            self.phase = "idle"
            self._log(f"aborted at step {event.step}; nothing saved after the last checkpoint")
            return
        self.finished = event
        self.phase = "finished"
        how = "stopped early" if event.stopped_early else "finished"
        lora = display_path(event.lora_path, self.root) if event.lora_path else "not written"
        self._log(f"{how} at step {event.step}; LoRA: {lora}")

    def _on_failed(self, event: Failed) -> None:
        self.failed = event
        self.phase = "failed"
        self._log(f"error: {paths_relative_to(event.message, self.root)}")

    def _log(self, line: str) -> None:
        self.log.append(line)

    # Derived numbers for the stats panel -------------------------------------------------

    def mean_times(self) -> tuple[float, float, float, float] | None:
        """Average (step, data, forward+backward, optimizer) seconds over the recent window."""
        if not self._times:
            return None
        cols = list(zip(*self._times))
        return fmean(cols[0]), fmean(cols[1]), fmean(cols[2]), fmean(cols[3])

    def iterations_per_s(self) -> float | None:
        times = self.mean_times()
        return 1.0 / times[0] if times and times[0] > 0 else None

    def samples_per_s(self) -> float | None:
        return fmean(t[4] for t in self._times) if self._times else None

    def eta_s(self) -> float | None:
        times = self.mean_times()
        if times is None or self.total_steps is None:
            return None
        return max(self.total_steps - self.step, 0) * times[0]


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_mb(mb: float | None) -> str:
    if mb is None:
        return "–"
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def paths_relative_to(text: str, root: Path | None) -> str:
    """``text`` with the project folder's own path taken off every path inside it."""
    if root is None:
        return text
    for prefix in {str(root), str(root.resolve())}:
        text = text.replace(prefix.rstrip("/") + "/", "")
    return text


def display_path(path: str | Path, root: Path | None) -> str:
    """A path relative to the project when it is inside it: shorter, and what the user typed."""
    p = Path(path)
    if root is not None:
        try:
            return str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(p)
