"""The checkpoints of the run: step, when it was saved, and why."""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

from loratui.events import CheckpointSaved

REASONS = {"interval": "every N", "request": "on request", "stop": "at stop", "final": "final",
           "best": "new best"}
BEST_MARK = "★ best val"
"""Beside the checkpoint with the lowest validation loss (save.keep_best keeps it; export --best writes it)."""


class CheckpointList(Widget):
    """Newest checkpoint first; the engine prunes old ones on disk, the list shows what it said."""

    COMPONENT_CLASSES = {"checkpoint-list--empty", "checkpoint-list--newest", "checkpoint-list--best"}
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
    CheckpointList > .checkpoint-list--best {
        color: $warning;
        text-style: bold;
    }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.checkpoints: list[CheckpointSaved] = []
        self.best_step: int | None = None

    def update_checkpoints(self, checkpoints: list[CheckpointSaved], best_step: int | None = None) -> None:
        if checkpoints != self.checkpoints or best_step != self.best_step:
            self.checkpoints = list(checkpoints)
            self.best_step = best_step
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
        best = self.get_component_rich_style("checkpoint-list--best")
        ordered = sorted(self.checkpoints, key=lambda c: c.step, reverse=True)
        marks = any(c.step == self.best_step for c in ordered)
        if marks:
            table.add_column()
        for i, ckpt in enumerate(ordered):
            saved = time.strftime("%H:%M:%S", time.localtime(ckpt.time))
            cells = [f"step {ckpt.step}", saved, REASONS.get(ckpt.reason, ckpt.reason)]
            if marks:
                cells.append(BEST_MARK if ckpt.step == self.best_step else "")
            style = newest if i == 0 else (best if ckpt.step == self.best_step else "")
            table.add_row(*cells, style=style)
        return table
