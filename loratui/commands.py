"""Commands a front end sends to a running engine.

The engine reads them between optimizer steps, so a command never lands in
the middle of a step and the model is always in a consistent state when it
acts on one. The channel is a plain thread-safe queue: the TUI calls
``send`` from the event loop while the engine runs in a worker thread.
"""

from __future__ import annotations

import queue
from enum import Enum


class Command(str, Enum):
    PAUSE = "pause"
    RESUME = "resume"
    SAMPLE_NOW = "sample_now"
    CHECKPOINT_NOW = "checkpoint_now"
    STOP = "stop"  # save a checkpoint and the LoRA, then end the run
    ABORT = "abort"  # end after the step in progress without saving
    DETACH = "detach"  # the screen leaves; the run goes on (the engine never sees it)
    CANCEL_NOTIFY = "cancel_notify"  # the run service's end-of-run countdown, not the engine's


class CommandChannel:
    def __init__(self) -> None:
        self._queue: queue.Queue[Command] = queue.Queue()

    def send(self, command: Command | str) -> None:
        self._queue.put(Command(command))

    def drain(self) -> list[Command]:
        """Every command sent since the last call, oldest first, without blocking."""
        out: list[Command] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float | None = None) -> Command | None:
        """Block for the next command (used while paused, so pausing costs no CPU)."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
