"""An image drawn with half-block characters: two pixels per cell, one as the
foreground of ``▀`` and one as its background.

Every terminal with true colour (and tmux with it) shows this, so it is the
fallback that always works; it needs nothing from the terminal but colours.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual.widget import Widget

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions

UPPER_HALF = "▀"


class HalfBlockImage:
    """A Rich renderable of pixel rows already sized to the cells they fill."""

    def __init__(self, rows: tuple[tuple[tuple[int, int, int], ...], ...], width: int) -> None:
        self.rows = rows
        self.width = width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterable[Segment]:
        if not self.rows:
            return
        pixel_w = len(self.rows[0])
        left = max((self.width - pixel_w) // 2, 0)
        for top, bottom in zip(self.rows[0::2], self.rows[1::2]):
            if left:
                yield Segment(" " * left)
            for up, down in zip(top, bottom):
                yield Segment(UPPER_HALF, Style(color=Color.from_rgb(*up), bgcolor=Color.from_rgb(*down)))
            yield Segment.line()


@lru_cache(maxsize=32)
def _pixel_rows(path: str, mtime_ns: int, max_w: int, max_h: int) -> tuple[tuple[tuple[int, int, int], ...], ...]:
    """Pixels of the image fitted (aspect kept) into max_w × max_h, height rounded to even."""
    from PIL import Image, ImageOps  # imported here: only needed once a sample exists

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            background = Image.new("RGB", img.size, (255, 255, 255))
            rgba = img.convert("RGBA")
            background.paste(rgba, mask=rgba.getchannel("A"))
            img = background
        scale = min(max_w / img.width, max_h / img.height)
        w = max(1, int(img.width * scale))
        h = max(2, int(img.height * scale) // 2 * 2)
        raw = img.resize((w, h), Image.Resampling.LANCZOS).tobytes()
    data = list(zip(raw[0::3], raw[1::3], raw[2::3]))
    return tuple(tuple(data[y * w:(y + 1) * w]) for y in range(h))


class ImageView(Widget):
    """Shows one image file, scaled to fit the widget, as half-block characters."""

    DEFAULT_CSS = """
    ImageView {
        height: 1fr;
        min-height: 3;
        width: 1fr;
    }
    ImageView > .image-view--message {
        color: $text-muted;
    }
    """
    COMPONENT_CLASSES = {"image-view--message"}

    path: reactive[Path | None] = reactive(None)
    """The image file; None shows nothing."""

    def __init__(self, path: Path | None = None, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.set_reactive(ImageView.path, path)

    def render(self) -> RenderResult:
        message_style = self.get_component_rich_style("image-view--message")
        if self.path is None:
            return Text("")
        width, height = self.size.width, self.size.height
        if width < 2 or height < 1:
            return Text("")
        if self.app.no_color:
            return Text(f"{self.path.name}: images need colour (NO_COLOR is set)", style=message_style)
        try:
            mtime = self.path.stat().st_mtime_ns
            rows = _pixel_rows(str(self.path), mtime, width, height * 2)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types; a bad file must not kill the view
            return Text(f"cannot show {self.path.name}: {exc}", style=message_style)
        return HalfBlockImage(rows, width)
