"""Write to the terminal only the cells that changed, and each picture only when it must be.

Textual repaints a widget by sending its whole region again, whether or not a cell of it
changed: a loss plot redrawn twice a second re-sends every braille cell, and a sixel
picture in a region that is repainted is re-sent in full (~100–200 KB). Over SSH for a
ten-hour run that is gigabytes for a screen that barely moves.

:class:`ScreenDiff` keeps what the terminal shows, cell by cell, and turns each of
Textual's updates into the few cursor moves and characters that differ. Pictures drawn
with sixel (see :mod:`loratui.tui.widgets.image_view`) reach it as cells marked with a
picture token: the picture's bytes are sent when any of its cells was something else on
the terminal (new, moved, uncovered), and never when the same cells are repainted.

:class:`DiffedOutput` is the mixin an :class:`~textual.app.App` uses to send its updates
through a ScreenDiff.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any, Iterator

from rich.cells import get_character_cell_size
from rich.control import Control
from rich.segment import Segment
from rich.style import Style
from textual._compositor import ChopsUpdate, CompositorUpdate, LayoutUpdate
from textual.strip import Strip

if TYPE_CHECKING:
    from rich.console import Console
    from textual.screen import Screen

PICTURE_META = "loratui.picture"
"""Style meta key of a cell covered by a picture: its value is the picture's token."""

GAP = 4
"""Unchanged cells between two changed ones that are re-sent rather than jumped over:
a cursor move costs about as much as four plain cells."""

_CONTINUATION = ""
"""The second cell of a double-width character."""


@dataclass(frozen=True)
class Picture:
    """A picture's terminal bytes and the cells it covers, top-left at (x, y)."""

    data: str
    x: int
    y: int
    width: int
    height: int


_pictures: dict[int, Picture] = {}
_tokens: dict[Picture, int] = {}
_next_token = 1


def register_picture(picture: Picture) -> int:
    """A token for the picture, to put in the meta of the cells it covers (the same picture, the same token)."""
    global _next_token
    token = _tokens.get(picture)
    if token is None:
        token, _next_token = _next_token, _next_token + 1
        _pictures[token], _tokens[picture] = picture, token
        while len(_pictures) > 64:  # pictures long gone; one on screen is registered again as it renders
            old = next(iter(_pictures))
            del _tokens[_pictures.pop(old)]
    return token


def picture_style(token: int) -> Style:
    return Style(meta={PICTURE_META: token})


Cell = tuple[Any, Style | None]
"""(character, style), or (("picture", token), style) for a cell under a picture."""


class ScreenDiff:
    """What the terminal shows, and the bytes that bring it to the next frame."""

    def __init__(self) -> None:
        self.cells: list[list[Cell | None]] = []
        self.width = self.height = 0

    def reset(self, width: int = 0, height: int = 0) -> None:
        """Forget the terminal's contents (cleared, resized, or written by someone else)."""
        self.width, self.height = width, height
        self.cells = [[None] * width for _ in range(height)]

    def update(self, update: CompositorUpdate, console: Console, width: int, height: int) -> str:
        """The terminal bytes for the cells of ``update`` that differ from what is shown."""
        if (width, height) != (self.width, self.height):
            self.reset(width, height)
        out: list[str] = []
        pictures: dict[int, Picture] = {}
        for x, y, strip in _fragments(update):
            if 0 <= y < height:
                self._row(x, y, strip, console, out, pictures)
        for token, picture in pictures.items():
            self._picture(token, picture, console, out)
        return "".join(out)

    # rows ------------------------------------------------------------------------------

    def _row(self, x: int, y: int, strip: Strip, console: Console, out: list[str],
             pictures: dict[int, Picture]) -> None:
        row = self.cells[y]
        new = list(_cells(strip))
        end = min(x + len(new), self.width)
        changed = [i for i in range(x, end) if _differs(row[i], new[i - x])]
        if not changed:
            return
        text_cells = []
        for i in changed:
            cell = new[i - x]
            if _is_picture(cell):
                row[i] = cell  # drawn below, with the picture
                picture = _pictures.get(cell[0][1])
                if picture is not None:
                    pictures[cell[0][1]] = picture
            else:
                text_cells.append(i)
        for start, stop in _runs(text_cells, new, x):
            cells = new[start - x:stop - x]
            row[start:stop] = cells
            text = _render(cells, console)
            if text:
                out.append(Control.move_to(start, y).segment.text + text)

    def _picture(self, token: int, picture: Picture, console: Console, out: list[str]) -> None:
        """Send the picture, then put back whatever text lies over part of it."""
        top, bottom = max(picture.y, 0), min(picture.y + picture.height, self.height)
        left, right = max(picture.x, 0), min(picture.x + picture.width, self.width)
        if top >= bottom or left >= right:
            return
        # Blank first: the picture's last column and row may cover cells only in part.
        for y in range(top, bottom):
            style = next((c[1] for c in self.cells[y][left:right] if c is not None), None)
            out.append(Control.move_to(left, y).segment.text + _render([(" ", style)] * (right - left), console))
        out.append(Control.move_to(picture.x, picture.y).segment.text + picture.data)
        mine = ("picture", token)
        for y in range(top, bottom):
            row = self.cells[y]
            over = [i for i in range(left, right) if row[i] is not None and row[i][0] != mine]
            for start, stop in _runs(over, row[left:right], left, gap=0):
                out.append(Control.move_to(start, y).segment.text + _render(row[start:stop], console))


def _is_picture(cell: Cell | None) -> bool:
    return cell is not None and isinstance(cell[0], tuple)


def _differs(old: Cell | None, new: Cell) -> bool:
    if old is None:
        return True
    if isinstance(old[0], tuple):
        return old[0] != new[0]  # a picture's cells are the picture, whatever tint lies on them
    return old != new


def _fragments(update: CompositorUpdate) -> Iterator[tuple[int, int, Strip]]:
    """(x, y, strip) for each piece of line the update writes, as its own render would crop it."""
    if isinstance(update, LayoutUpdate):
        x = update.region.x
        for y, line in enumerate(update.strips, update.region.y):
            for strip in line:
                yield x, y, strip
                x += strip.cell_length
            x = update.region.x
    elif isinstance(update, ChopsUpdate):
        for y, x1, x2 in update.spans:
            line, ends = update.chops[y], update.chop_ends[y]
            for end, (x, strip) in zip(ends, line.items()):
                if strip is None or x > x2 or end <= x1:
                    continue
                if not (x2 > x >= x1 and end <= x2):
                    strip = strip.crop(0, min(end, x2) - x)
                yield x, y, strip


def _cells(strip: Strip) -> Iterator[Cell]:
    for text, style, control in strip:
        if control:
            continue
        token = style.meta.get(PICTURE_META) if style is not None and style._meta else None
        if token is not None:
            for _ in range(len(text)):
                yield ("picture", token), style
            continue
        for char in text:
            size = get_character_cell_size(char)
            if size == 1:
                yield char, style
            elif size == 2:
                yield char, style
                yield _CONTINUATION, style
            # zero-width characters are dropped: Textual's own output keeps none that matter


def _runs(changed: list[int], cells: list[Cell | None], offset: int, gap: int = GAP) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges covering the changed columns, joined across short gaps without pictures.

    A gap is re-sent as it is; over a picture's cell that would erase part of the picture.
    """
    if not changed:
        return
    start = prev = changed[0]
    for i in changed[1:]:
        between = cells[max(prev + 1 - offset, 0):max(i - offset, 0)]
        if i - prev > gap + 1 or any(_is_picture(c) for c in between):
            yield _widen(start, prev + 1, cells, offset)
            start = i
        prev = i
    yield _widen(start, prev + 1, cells, offset)


def _widen(start: int, stop: int, cells: list[Cell | None], offset: int) -> tuple[int, int]:
    """Never start on the second half of a wide character, nor end inside one."""
    while start > offset and cells[start - offset] is not None and cells[start - offset][0] == _CONTINUATION:
        start -= 1
    while stop - offset < len(cells) and cells[stop - offset] is not None and cells[stop - offset][0] == _CONTINUATION:
        stop += 1
    return start, stop


def _render(cells: list[Cell | None], console: Console) -> str:
    segments = []
    for style, group in groupby(cells, key=lambda c: None if c is None else c[1]):
        text = "".join(" " if c is None or isinstance(c[0], tuple) else c[0] for c in group)
        segments.append(Segment(text, style))  # meta is never written out
    return Strip(segments).render(console)


class RawUpdate(CompositorUpdate):
    """Bytes already worked out by a ScreenDiff."""

    def __init__(self, text: str) -> None:
        self.text = text

    def render_segments(self, console: Console) -> str:
        return self.text


class DiffedOutput:
    """App mixin: every compositor update goes to the terminal through a :class:`ScreenDiff`."""

    _screen_diff: ScreenDiff | None = None

    def _display(self, screen: Screen, renderable: Any) -> None:
        app: Any = self
        # Textual drops the update in these cases (see App._display): then nothing reached the terminal.
        written = (renderable is not None and not app._batch_count and app._running and not app._closed
                   and not app.is_headless and app._driver is not None)
        if app.is_inline:
            self._screen_diff = None
        elif not written:
            pass  # the terminal is as it was, and so is what we know of it
        elif isinstance(renderable, CompositorUpdate) and not isinstance(renderable, RawUpdate):
            if self._screen_diff is None:
                self._screen_diff = ScreenDiff()
                app.app_resume_signal.subscribe(app, self._forget_screen)
            size = app.size
            text = self._screen_diff.update(renderable, app.console, size.width, size.height)
            if not text:
                return
            renderable = RawUpdate(text)
        elif self._screen_diff is not None:
            self._screen_diff.reset()  # written around us: nothing is known any more
        super()._display(screen, renderable)  # type: ignore[misc]

    def _forget_screen(self, _: object = None) -> None:
        if self._screen_diff is not None:
            self._screen_diff.reset()
