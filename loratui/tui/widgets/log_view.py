"""The tail of ``logs/train.log`` followed live, with the run's status lines."""

from __future__ import annotations

from pathlib import Path

from textual.events import Resize
from textual.widgets import RichLog

TAIL_BYTES = 64 * 1024
"""How much of an existing log to show on open: the recent past, not a long run's megabytes."""


class FollowingLog(RichLog):
    """A RichLog that stays on its newest line when its size changes.

    RichLog scrolls to the end when a line is written, against the size it has
    then. Lines written before the first layout, or a pane that grows or
    shrinks later (panes stacking, the finished panel appearing), left the
    newest lines below the fold.
    """

    def on_resize(self, event: Resize) -> None:
        # Textual runs RichLog's own on_resize as well (it writes the lines held back until now).
        if self.auto_scroll:
            self.call_after_refresh(self.scroll_end, animate=False)


class LogView(FollowingLog):
    """A RichLog that follows a growing file by polling its size (works on every filesystem)."""

    DEFAULT_CSS = """
    LogView {
        height: 1fr;
        background: $surface;
    }
    """

    def __init__(self, log_file: Path | None, *, poll_s: float = 0.5, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, highlight=False, markup=False, wrap=True, max_lines=5000,
                         min_width=20)
        self.log_file = log_file
        self.poll_s = poll_s
        self._offset = 0

    def on_mount(self) -> None:
        self.read_new(tail=True)
        self.set_interval(self.poll_s, self.read_new)

    def read_new(self, tail: bool = False) -> None:
        if self.log_file is None:
            return
        try:
            size = self.log_file.stat().st_size
        except OSError:
            return
        if size < self._offset:  # truncated or replaced: start over
            self._offset = 0
        if size == self._offset:
            return
        start = max(size - TAIL_BYTES, self._offset) if tail else self._offset
        with self.log_file.open("rb") as f:
            f.seek(start)
            chunk = f.read(size - start)
        end = chunk.rfind(b"\n")
        if end < 0:
            return  # a line still being written; take it whole next time
        self._offset = start + end + 1
        text = chunk[:end].decode("utf-8", errors="replace")
        if tail and start > 0:
            text = text.split("\n", 1)[-1]  # drop the partial first line
        for line in text.splitlines():
            self.write(line)
