"""An image in the terminal: kitty graphics or sixel where the terminal has them
(see :mod:`loratui.tui.graphics`), half-block characters everywhere else.

Half-blocks put two pixels in a cell, one as the foreground of ``▀`` and one as
its background. Every terminal with true colour (and tmux with it) shows them,
so they are the fallback that always works; they need nothing but colours.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult, RenderResult
from textual.reactive import reactive
from textual.widget import Widget

from loratui.tui.graphics import Method, image_method

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage
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
    from PIL import Image  # imported here: only needed once a picture is shown

    img = _picture(path, mtime_ns)
    scale = min(max_w / img.width, max_h / img.height)
    w = max(1, int(img.width * scale))
    h = max(2, int(img.height * scale) // 2 * 2)
    raw = img.resize((w, h), Image.Resampling.LANCZOS).tobytes()
    data = list(zip(raw[0::3], raw[1::3], raw[2::3]))
    return tuple(tuple(data[y * w:(y + 1) * w]) for y in range(h))


GRAPHIC_MAX_SIDE = 1024
"""Pixels kept of a picture: more than a terminal pane shows, and a camera photo
scaled once here is not scaled again on every repaint."""


@lru_cache(maxsize=8)
def _picture(path: str, mtime_ns: int) -> PILImage:
    """The image upright, on white where it was transparent, at most GRAPHIC_MAX_SIDE a side."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img.thumbnail((GRAPHIC_MAX_SIDE, GRAPHIC_MAX_SIDE), Image.Resampling.LANCZOS)
        if img.mode == "RGB":
            return img.copy()
        background = Image.new("RGB", img.size, (255, 255, 255))
        rgba = img.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background


def _graphic_widget(method: Method) -> Widget:
    """textual-image's widget for the method; imported only here, once detection ran."""
    if method == "sixel":
        from textual_image.widget import SixelImage  # sixel needs its own widget inside Textual

        return SixelImage(classes="image-view--graphic")
    from textual_image.widget import TGPImage

    return TGPImage(classes="image-view--graphic")


class ImageView(Widget):
    """Shows one image file, scaled to fit the widget, by the method chosen at start-up."""

    DEFAULT_CSS = """
    ImageView {
        height: 1fr;
        min-height: 3;
        width: 1fr;
        align-horizontal: center;
    }
    ImageView > .image-view--message {
        color: $text-muted;
    }
    ImageView > .image-view--graphic {
        width: auto;
        height: auto;
    }
    """
    COMPONENT_CLASSES = {"image-view--message"}

    path: reactive[Path | None] = reactive(None)
    """The image file; None shows nothing."""

    def __init__(self, path: Path | None = None, *, method: Method | None = None, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.set_reactive(ImageView.path, path)
        self.method: Method = method or image_method()
        """kitty and sixel draw through a textual-image widget inside this one; halfblock draws here."""
        self._problem = ""
        """Why the picture cannot be shown (kitty and sixel only; halfblock finds out as it draws)."""
        self._graphic: Any = None
        """textual-image's widget (kitty and sixel only)."""

    def compose(self) -> ComposeResult:
        if self.method != "halfblock":
            self._graphic = _graphic_widget(self.method)
            yield self._graphic

    def on_mount(self) -> None:
        self._show_picture()

    def watch_path(self) -> None:
        self._show_picture()

    def on_unmount(self) -> None:
        if self.method == "kitty" and self._graphic is not None:
            self._graphic.image = None  # frees the picture held in the terminal

    def _show_picture(self) -> None:
        """Hand the picture to the kitty or sixel widget, or say why there is none."""
        if self._graphic is None:
            return
        picture = None
        self._problem = ""
        if self.path is not None:
            if self.app.no_color:
                self._problem = f"{self.path.name}: images need colour (NO_COLOR is set)"
            else:
                try:
                    picture = _picture(str(self.path), self.path.stat().st_mtime_ns)
                except Exception as exc:  # noqa: BLE001 - PIL raises many types; a bad file must not kill the view
                    self._problem = f"cannot show {self.path.name}: {exc}"
        self._graphic.image = picture
        self._graphic.display = picture is not None
        self.refresh(layout=True)  # the picture's shape decides the widget's size

    def render(self) -> RenderResult:
        message_style = self.get_component_rich_style("image-view--message")
        if self.path is None:
            return Text("")
        if self.method != "halfblock":
            return Text(self._problem, style=message_style)
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
