"""Events the engine emits and every front end consumes.

One stream feeds the dashboard, the headless console and ``metrics.jsonl``.
Each event is a frozen dataclass that turns into a flat JSON object and back,
so the same stream can later be carried over a socket to a dashboard that
attaches to a run started elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class Event:
    """Base class: ``kind`` names the event in JSON."""

    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["event"] = self.kind
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=True)


@dataclass(frozen=True)
class Started(Event):
    """Training is about to run its first step (models loaded, cache ready)."""

    kind: ClassVar[str] = "started"
    total_steps: int
    start_step: int
    steps_per_epoch: int
    num_images: int
    device: str
    family: str
    precision: str
    trainable_params: int
    resumed_from: str | None = None
    time: float = field(default_factory=_now)
    # One (name, "train"|"reg", usable images, images per epoch, share of the epoch) per concept;
    # empty for a single folder without regularization.
    concepts: tuple = ()


@dataclass(frozen=True)
class StepDone(Event):
    """One optimizer step finished; the row written to ``metrics.jsonl``."""

    kind: ClassVar[str] = "step"
    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    step_time_s: float
    data_time_s: float
    compute_time_s: float
    optimizer_time_s: float
    samples_per_s: float
    ram_mb: float
    gpu_alloc_mb: float | None = None
    gpu_peak_mb: float | None = None
    skipped_steps: int = 0
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str
    reason: str = "interval"  # interval | request | stop | final
    time: float = field(default_factory=_now)
    removed: tuple[str, ...] = ()
    """Older checkpoints deleted right after this one, to keep save.keep of them."""
    best_step: int | None = None
    """The step of the checkpoint with the lowest validation loss so far (kept by save.keep_best)."""


@dataclass(frozen=True)
class SampleReady(Event):
    kind: ClassVar[str] = "sample"
    step: int
    path: str
    prompt: str
    seed: int
    time: float = field(default_factory=_now)
    source: str = ""
    """Where the prompt came from when it is not a [[sample.prompts]] entry (a training image's caption)."""


@dataclass(frozen=True)
class ValidationDone(Event):
    """The validation loss on the held-out images; also a row of ``metrics.jsonl``."""

    kind: ClassVar[str] = "validation"
    step: int
    val_loss: float
    band_losses: dict[str, float]
    """The loss of each timestep band (``t0-249`` …), whose mean is val_loss."""
    images: int
    eval_time_s: float
    cost_share: float
    """Time spent evaluating so far as a share of the run's time so far."""
    best_step: int
    best_val_loss: float
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class Advice(Event):
    """A note from the advisor: what the curves show and what to try, with the numbers."""

    kind: ClassVar[str] = "advice"
    rule: str
    text: str
    step: int
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class Paused(Event):
    kind: ClassVar[str] = "paused"
    step: int
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class Resumed(Event):
    kind: ClassVar[str] = "resumed"
    step: int
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class Status(Event):
    """Free text for the status line and the log (loading, caching, …)."""

    kind: ClassVar[str] = "status"
    text: str
    level: str = "info"  # info | warning | error
    progress: float | None = None  # 0..1 for long phases such as caching
    time: float = field(default_factory=_now)


OUTCOMES = ("finished", "stopped", "aborted")
"""How a run that did not fail ended: all its steps, stopped by the user (saved), aborted (not saved)."""


@dataclass(frozen=True)
class Finished(Event):
    kind: ClassVar[str] = "finished"
    step: int
    lora_path: str | None
    outcome: str = "finished"
    time: float = field(default_factory=_now)

    @property
    def stopped_early(self) -> bool:
        return self.outcome != "finished"


@dataclass(frozen=True)
class Failed(Event):
    kind: ClassVar[str] = "failed"
    message: str
    log_path: str | None = None
    step: int | None = None
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class NotifyPending(Event):
    """The end-of-run notification runs in ``seconds`` unless a dashboard cancels it."""

    kind: ClassVar[str] = "notify_pending"
    status: str
    seconds: float
    what: str
    """The command and/or webhook host, as shown to the user."""
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class NotifyDone(Event):
    """The notification ran (``ok`` says whether everything in it worked), or was cancelled."""

    kind: ClassVar[str] = "notify_done"
    status: str
    ok: bool
    detail: str
    cancelled: bool = False
    time: float = field(default_factory=_now)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (Started, StepDone, CheckpointSaved, SampleReady, ValidationDone, Advice, Paused, Resumed, Status,
                Finished, Failed, NotifyPending, NotifyDone)
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from its JSON form; unknown fields from newer versions are dropped."""
    data = dict(data)
    cls = EVENT_TYPES[data.pop("event")]
    if cls is Finished and "outcome" not in data and data.get("stopped_early"):
        data["outcome"] = "stopped"  # written by an older version
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


EventSink = Callable[[Event], None]


class EventFanout:
    """Sends each event to several sinks; one failing sink must not stop training."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks: list[EventSink] = list(sinks)

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def __call__(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - a broken display must not kill a paid GPU run
                import logging

                logging.getLogger("loratui").exception("event sink failed on %s", event.kind)
