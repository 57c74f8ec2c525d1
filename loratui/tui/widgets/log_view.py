"""The tail of ``logs/train.log`` followed live, with the run's status lines."""

from __future__ import annotations

import re
from pathlib import Path

from textual.events import Resize
from textual.widgets import RichLog

TAIL_BYTES = 64 * 1024
"""How much of an existing log to show on open: the recent past, not a long run's megabytes."""


_WORDS = re.compile(r"\S+\s*")
_PATH_PARTS = re.compile(r"[^/]*/|[^/]+")


def _pieces(word: str, width: int) -> list[str]:
    """A word too wide for a row, in pieces that each fit: after its ``/`` where it has them."""
    pieces: list[str] = []
    for part in _PATH_PARTS.findall(word):
        pieces.extend(part[i:i + width] for i in range(0, len(part), width))
    return pieces


def wrap_at_separators(line: str, width: int, indent: str = "  ") -> list[str]:
    """``line`` cut into rows of at most ``width`` cells, rows after the first indented.

    Rows break at spaces; a word wider than a row (a long path) breaks after a ``/`` so it wraps
    between folders (``…/output/`` then ``NAME.safetensors``), and only a name wider than a row is cut.
    """
    inner = width - len(indent)
    if inner < 2 or len(line) <= width:
        return [line]
    rows: list[str] = []
    current = ""
    for word in _WORDS.findall(line):
        limit = inner if rows else width
        if len(current) + len(word.rstrip()) <= limit:
            current += word
            continue
        if len(word.rstrip()) <= inner:  # fits on a row of its own
            if current.strip():
                rows.append(current.rstrip())
            current = word
            continue
        for piece in _pieces(word.rstrip(), inner):  # wider than any row: fill this row, then go on
            if len(current) + len(piece) > (inner if rows else width):
                rows.append(current.rstrip())
                current = ""
            current += piece
        current += " "
    if current.strip():
        rows.append(current.rstrip())
    return [rows[0], *(indent + r for r in rows[1:])]


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

    def write_line(self, line: str) -> None:
        """Write one line, wrapped at spaces and path separators to the pane's width."""
        width = self.scrollable_content_region.width
        if width <= 0:  # not laid out yet: RichLog wraps it (at spaces) once it knows its size
            self.write(line)
            return
        self.write("\n".join(wrap_at_separators(line, width)))


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
