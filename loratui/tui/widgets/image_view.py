"""An image in the terminal: kitty graphics or sixel where the terminal has them
(see :mod:`loratui.tui.graphics`), half-block characters everywhere else.

Half-blocks put two pixels in a cell, one as the foreground of ``▀`` and one as
its background. Every terminal with colours (and tmux) shows them, so they are the
fallback that always works.

Sixel pictures are fitted into the widget (aspect kept, never padded), centred, and
drawn as cells marked with a picture token; :mod:`loratui.tui.screen_diff` sends the
picture's bytes when those cells appear or are uncovered, not on every repaint.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult, RenderResult
from textual.geometry import Region
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from loratui.tui.graphics import Method, cell_pixels, image_method
from loratui.tui.screen_diff import Picture, picture_style, register_picture

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


def fit_cells(picture_w: int, picture_h: int, cols: int, rows: int, cell_w: int, cell_h: int) -> tuple[int, int]:
    """Pixel size of the picture fitted into cols × rows cells, aspect kept.

    The height is a whole number of sixel bands (6 px): terminals (tmux among them) size
    a sixel picture by its bands, and a last band reaching into the next row made the
    picture one row too tall, over the line below it.
    """
    scale = min(cols * cell_w / picture_w, rows * cell_h / picture_h)
    width = max(1, min(cols * cell_w, int(picture_w * scale)))
    height = max(6, int(picture_h * scale) // 6 * 6)
    return width, height


SixelKey = tuple[str, int, int, int, int, int, tuple[int, int, int], tuple[int, int, int, int]]
"""(path, mtime_ns, width, height, canvas width, canvas height, background, crop): the picture
scaled to width × height, centred on a canvas of whole cells, cut to crop."""

_sixel_cache: dict[SixelKey, str] = {}


def _sixel_data(key: SixelKey) -> str:
    """The sixel string for ``key``, encoded once (a second or so for a large picture on a busy CPU).

    The canvas is whole cells: tmux stretches a picture's last, partly covered cell column
    and row into a strip beside and below it. Its margin is the pane's background colour.
    """
    data = _sixel_cache.get(key)
    if data is None:
        from PIL import Image

        from loratui.tui import sixel

        path, mtime_ns, width, height, canvas_w, canvas_h, background, crop = key
        canvas = Image.new("RGB", (canvas_w, canvas_h), background)
        scaled = _picture(path, mtime_ns).resize((width, height), Image.Resampling.LANCZOS)
        canvas.paste(scaled, ((canvas_w - width) // 2, (canvas_h - height) // 2))
        data = _sixel_cache[key] = sixel.encode(canvas.crop(crop))
        while len(_sixel_cache) > 16:
            del _sixel_cache[next(iter(_sixel_cache))]
    return data


def _graphic_widget(method: Method) -> Widget:
    """textual-image's kitty widget; imported only here, once detection chose kitty."""
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
        """kitty draws through a textual-image widget inside this one; sixel and halfblock draw here."""
        self._problem = ""
        """Why the picture cannot be shown (kitty only; sixel and halfblock find out as they draw)."""
        self._encoding: set[SixelKey] = set()
        """Sixel pictures being encoded in a worker thread."""
        self._graphic: Any = None
        """textual-image's widget (kitty only)."""

    def compose(self) -> ComposeResult:
        if self.method == "kitty":
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
        """Hand the picture to the kitty widget, or say why there is none."""
        if self._graphic is None:
            self.refresh()
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

    def render_lines(self, crop: Region) -> list[Strip]:
        if self.method == "sixel" and self.path is not None and not self.app.no_color:
            try:
                return self._sixel_lines(crop)
            except Exception:  # noqa: BLE001 - render() says what is wrong with the file
                pass
        return super().render_lines(crop)

    def _sixel_lines(self, crop: Region) -> list[Strip]:
        """Blank cells, and the picture's cells marked with its token (sent by the screen diff)."""
        assert self.path is not None
        width, height = self.size
        cell_w, cell_h = cell_pixels()
        mtime = self.path.stat().st_mtime_ns
        source = _picture(str(self.path), mtime)
        pixel_w, pixel_h = fit_cells(source.width, source.height, width, height, cell_w, cell_h)
        cols, rows = -(-pixel_w // cell_w), -(-pixel_h // cell_h)
        left = (width - cols) // 2
        where = self.screen.find_widget(self)
        # Only the part on screen is sent: a picture under the pane's edge would scroll the terminal.
        shown = where.visible_region.intersection(Region(where.region.x + left, where.region.y, cols, rows))
        base = Style(bgcolor=self.rich_style.bgcolor)
        blank = Strip([Segment(" " * width, base)], width)
        if not shown.area:
            return [blank.crop(crop.x, crop.right)] * crop.height
        canvas_w, canvas_h = cols * cell_w, rows * cell_h // 6 * 6
        cut_x, cut_y = (shown.x - where.region.x - left) * cell_w, (shown.y - where.region.y) * cell_h
        cut = (cut_x, cut_y, min(canvas_w, cut_x + shown.width * cell_w),
               min(canvas_h, cut_y + (shown.height * cell_h) // 6 * 6))
        background = base.bgcolor.get_truecolor() if base.bgcolor is not None else (0, 0, 0)
        key: SixelKey = (str(self.path), mtime, pixel_w, pixel_h, canvas_w, canvas_h, tuple(background), cut)
        data = _sixel_cache.get(key)
        if data is None:
            if key not in self._encoding:
                self._encoding.add(key)
                self._encode_sixel(key)  # blank until it is ready: the screen keeps moving meanwhile
            return [blank.crop(crop.x, crop.right)] * crop.height
        token = register_picture(Picture(data, shown.x, shown.y, shown.width, shown.height))
        marked = base + picture_style(token)
        first_col, first_row = shown.x - where.region.x, shown.y - where.region.y
        row = Strip([Segment(" " * first_col, base), Segment(" " * shown.width, marked),
                     Segment(" " * (width - first_col - shown.width), base)], width)
        return [(row if first_row <= y < first_row + shown.height else blank).crop(crop.x, crop.right)
                for y in crop.line_range]

    @work(thread=True, group="sixel", exit_on_error=False)
    def _encode_sixel(self, key: SixelKey) -> None:
        try:
            _sixel_data(key)
        finally:
            self._encoding.discard(key)
        self.app.call_from_thread(self.refresh)

    def render(self) -> RenderResult:
        message_style = self.get_component_rich_style("image-view--message")
        if self.path is None:
            return Text("")
        if self.method == "kitty":
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
        if self.method == "sixel":
            return Text("")  # the picture is drawn by render_lines
        return HalfBlockImage(rows, width)
