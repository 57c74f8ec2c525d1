"""The checkpoints of the run: step, when it was saved, and why."""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

from loratui.events import CheckpointSaved

REASONS = {"interval": "every N", "request": "on request", "stop": "at stop", "final": "final"}


class CheckpointList(Widget):
    """Newest checkpoint first; the engine prunes old ones on disk, the list shows what it said."""

    COMPONENT_CLASSES = {"checkpoint-list--empty", "checkpoint-list--newest"}
    DEFAULT_CSS = """
    CheckpointList {
        height: auto;
        max-height: 12;
    }
    CheckpointList > .checkpoint-list--empty {
        color: $text-muted;
    }
    CheckpointList > .checkpoint-list--newest {
        color: $success;
        text-style: bold;
    }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.checkpoints: list[CheckpointSaved] = []

    def update_checkpoints(self, checkpoints: list[CheckpointSaved]) -> None:
        if checkpoints != self.checkpoints:
            self.checkpoints = list(checkpoints)
            self.refresh(layout=True)

    def render(self) -> RenderResult:
        if not self.checkpoints:
            return Text("No checkpoints yet — press c to save one.",
                        style=self.get_component_rich_style("checkpoint-list--empty"))
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right")
        table.add_column()
        table.add_column()
        newest = self.get_component_rich_style("checkpoint-list--newest")
        ordered = sorted(self.checkpoints, key=lambda c: c.step, reverse=True)
        for i, ckpt in enumerate(ordered):
            saved = time.strftime("%H:%M:%S", time.localtime(ckpt.time))
            table.add_row(f"step {ckpt.step}", saved, REASONS.get(ckpt.reason, ckpt.reason),
                          style=newest if i == 0 else "")
        return table
