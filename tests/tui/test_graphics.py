"""Images by kitty graphics, sixel or half-blocks: which one a terminal gets, and what each sends.

No test here asks a real terminal anything. textual-image queries the terminal when it is
first imported, and only when stdout is a terminal; the ``offline_library`` fixture replaces
stdout with a buffer first, which also catches the kitty graphics commands it writes there.
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from textual.app import App, ComposeResult
from textual.geometry import Region

from loratui.tui import graphics
from loratui.tui.graphics import choose_method, detect, image_method, tmux_passthrough
from loratui.tui.widgets.image_view import HalfBlockImage, ImageView

PLACEHOLDER = chr(0x10EEEE)
"""The character kitty replaces with a piece of the image (one per cell)."""


class Calls:
    """A stand-in for the terminal query, counting how often it was asked."""

    def __init__(self, answer: str = "kitty", error: Exception | None = None) -> None:
        self.answer, self.error, self.count = answer, error, 0

    def __call__(self):
        self.count += 1
        if self.error is not None:
            raise self.error
        return self.answer


def choose(env: dict[str, str], *, is_tty: bool = True, probe: Calls | None = None,
           prepare: Calls | None = None) -> str:
    return choose_method(env, is_tty=is_tty, probe=probe or Calls(), prepare=prepare or Calls())


# -- which method ---------------------------------------------------------------


@pytest.mark.parametrize("answer", ["kitty", "sixel", "halfblock"])
def test_a_terminal_gets_what_it_answers(answer):
    probe = Calls(answer)
    assert choose({}, probe=probe) == answer
    assert choose({"LORATUI_IMAGES": "auto"}, probe=probe) == answer
    assert probe.count == 2


@pytest.mark.parametrize("forced", ["kitty", "sixel"])
def test_the_environment_forces_a_method_without_asking(forced):
    probe, prepare = Calls("halfblock"), Calls()
    assert choose({"LORATUI_IMAGES": forced.upper()}, probe=probe, prepare=prepare) == forced
    assert probe.count == 0 and prepare.count == 1  # cells are still measured


def test_forced_halfblock_never_loads_the_library():
    probe, prepare = Calls(), Calls()
    assert choose({"LORATUI_IMAGES": "halfblock"}, probe=probe, prepare=prepare) == "halfblock"
    assert probe.count == prepare.count == 0


def test_an_unknown_value_is_detected_as_auto(caplog):
    assert choose({"LORATUI_IMAGES": "iterm"}, probe=Calls("sixel")) == "sixel"
    assert "LORATUI_IMAGES=iterm" in caplog.text


@pytest.mark.parametrize("env", [{}, {"LORATUI_IMAGES": "kitty"}])
def test_not_a_terminal_means_halfblock(env):
    probe, prepare = Calls(), Calls()
    assert choose(env, is_tty=False, probe=probe, prepare=prepare) == "halfblock"
    assert probe.count == prepare.count == 0


def test_tmux_gets_halfblock_unless_told_otherwise():
    probe = Calls("sixel")
    assert choose({"TMUX": "/tmp/tmux-0/default,1,0"}, probe=probe) == "halfblock"
    assert probe.count == 0
    assert choose({"TMUX": "/tmp/tmux-0/default,1,0", "LORATUI_IMAGES": "sixel"}) == "sixel"
    assert choose({"TMUX": "/tmp/tmux-0/default,1,0", "LORATUI_IMAGES": "kitty"}) == "kitty"


@pytest.mark.parametrize("env", [{}, {"LORATUI_IMAGES": "kitty"}])
def test_no_color_means_no_graphics(env):
    probe, prepare = Calls(), Calls()
    assert choose({"NO_COLOR": "1", **env}, probe=probe, prepare=prepare) == "halfblock"
    assert probe.count == prepare.count == 0


def test_a_failing_query_falls_back_to_halfblock():
    assert choose({}, probe=Calls(error=OSError("stdin is not readable"))) == "halfblock"
    assert choose({"LORATUI_IMAGES": "sixel"}, prepare=Calls(error=ImportError("no textual_image"))) == "halfblock"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_detect_decides_for_the_whole_process(monkeypatch):
    monkeypatch.setattr(graphics, "_method", "halfblock")
    monkeypatch.setattr(graphics, "_probe_terminal", Calls("sixel"))
    assert image_method() == "halfblock"
    assert detect({}, stdin=FakeTerminal(), stdout=io.StringIO()) == "halfblock"  # stdout redirected
    assert detect({}, stdin=FakeTerminal(), stdout=FakeTerminal()) == "sixel"
    assert image_method() == "sixel"
    assert ImageView().method == "sixel"


def test_without_detect_images_are_halfblocks_and_the_library_stays_unloaded(tmp_path):
    # In a fresh interpreter: the app and --help must not import textual_image (it would query
    # the terminal, and costs start-up time); only detect() does.
    code = (
        "import sys, contextlib, io\n"
        "from loratui.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "from loratui.tui.app import LoratuiApp\n"
        "from loratui.tui.widgets.image_view import ImageView\n"
        "assert ImageView().method == 'halfblock'\n"
        "assert not [m for m in sys.modules if m.startswith('textual_image')], 'textual_image was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2],
                   stdin=subprocess.DEVNULL, timeout=60)


def test_tmux_passthrough_doubles_escapes():
    assert tmux_passthrough("\x1b_Ga=d\x1b\\") == "\x1bPtmux;\x1b\x1b_Ga=d\x1b\x1b\\\x1b\\"


# -- what the image view sends ------------------------------------------------------


@pytest.fixture
def terminal_out(monkeypatch) -> io.StringIO:
    """textual-image loaded with stdout replaced: no terminal query, and kitty commands land here."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "__stdout__", out)
    monkeypatch.delenv("TEXTUAL_CELL_WIDTH", raising=False)
    monkeypatch.delenv("TEXTUAL_CELL_HEIGHT", raising=False)
    importlib.import_module("textual_image.widget")  # the import reads (and caches) the cell size
    from textual_image import _terminal
    from textual_image.renderable import tgp

    monkeypatch.setattr(_terminal.get_cell_size, "_result", _terminal.CellSize(10, 20), raising=False)
    monkeypatch.setattr(tgp, "_send_tgp_message", tgp._send_tgp_message)  # undo a tmux wrapper
    return out


@pytest.fixture
def pictures(tmp_path: Path) -> dict[str, Path]:
    wide = tmp_path / "wide.png"
    Image.linear_gradient("L").resize((96, 48)).convert("RGB").save(wide)
    tall = tmp_path / "tall.png"
    Image.new("RGBA", (40, 80), (200, 20, 20, 128)).save(tall)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    return {"wide": wide, "tall": tall, "broken": broken}


class Host(App):
    def __init__(self, path: Path, method: str | None) -> None:
        super().__init__()
        self.path, self.method = path, method

    def compose(self) -> ComposeResult:
        yield ImageView(self.path, method=self.method)  # type: ignore[arg-type]


def drawn(app: App) -> str:
    """Every character and control sequence the image view and its children draw."""
    parts = []
    for widget in [app.query_one(ImageView), *app.query_one(ImageView).query("*")]:
        if widget.display and widget.size.area:
            strips = widget.render_lines(Region(0, 0, *widget.size))
            parts.extend(segment.text for strip in strips for segment in strip)
    return "".join(parts)


def kitty_commands(out: io.StringIO) -> list[str]:
    """The control part (``a=p,i=…``) of each kitty graphics command written so far."""
    return [part.split("\x1b\\")[0].split(";")[0] for part in out.getvalue().split("\x1b_G")[1:]]


async def test_kitty_sends_the_picture_and_places_it_with_placeholders(terminal_out, pictures):
    app = Host(pictures["wide"], "kitty")
    async with app.run_test(size=(40, 12)) as pilot:
        await pilot.pause()
        commands = kitty_commands(terminal_out)
        sent = [c for c in commands if "f=100" in c]
        placed = [c for c in commands if c.startswith("a=p")]
        assert sent and placed and "U=1" in placed[0]  # PNG data, then a placement for placeholders
        # 96×48 px fitted into 40×12 cells of 10×20 px: 400×200 px, 40 cells by 10 rows
        assert drawn(app).count(PLACEHOLDER) == 40 * 10
        first_id = placed[0].split("i=")[1].split(",")[0]

        app.query_one(ImageView).path = pictures["tall"]
        await pilot.pause()
        later = kitty_commands(terminal_out)[len(commands):]
        assert f"a=d,I={first_id}" in later  # the old picture freed in the terminal
        assert any("f=100" in c and f"i={first_id}," not in c for c in later)
        assert drawn(app).count(PLACEHOLDER) == 12 * 12  # 40×80 px: 12 rows tall, 120 px wide


async def test_sixel_draws_sixel_data_and_changes_with_the_path(terminal_out, pictures):
    app = Host(pictures["wide"], "sixel")
    async with app.run_test(size=(40, 12)) as pilot:
        await pilot.pause()
        first = drawn(app)
        start = first.index("\x1bP")
        assert "q" in first[start:start + 10] and "#0;2;" in first  # sixel data with a colour register
        assert first.index("\x1b\\", start) > start  # and its end
        assert PLACEHOLDER not in first and terminal_out.getvalue() == ""  # sixel goes through Textual

        app.query_one(ImageView).path = pictures["tall"]
        await pilot.pause()
        second = drawn(app)
        assert "\x1bP" in second and second != first


@pytest.mark.parametrize("method", ["kitty", "sixel"])
async def test_a_bad_file_is_a_message_not_a_traceback(terminal_out, pictures, method):
    app = Host(pictures["broken"], method)
    async with app.run_test(size=(60, 10)) as pilot:
        await pilot.pause()
        shown = drawn(app)
        assert "cannot show broken.png" in shown and "\x1bP" not in shown and PLACEHOLDER not in shown
        app.query_one(ImageView).path = pictures["wide"]
        await pilot.pause()
        assert "cannot show" not in drawn(app)


async def test_no_color_shows_a_note_in_graphics_mode_too(terminal_out, pictures, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = Host(pictures["wide"], "kitty")
    async with app.run_test(size=(60, 10)) as pilot:
        await pilot.pause()
        assert "images need colour" in drawn(app)
        assert kitty_commands(terminal_out) == []


async def test_kitty_inside_tmux_goes_through_passthrough(terminal_out, pictures):
    graphics._send_kitty_through_tmux()  # what detect() does for LORATUI_IMAGES=kitty inside tmux
    app = Host(pictures["wide"], "kitty")
    async with app.run_test(size=(40, 12)) as pilot:
        await pilot.pause()
        sent = terminal_out.getvalue()
        assert sent.startswith("\x1bPtmux;\x1b\x1b_G") and "\x1b\x1b_Ga=p" in sent
        assert drawn(app).count(PLACEHOLDER) == 40 * 10


async def test_halfblock_is_the_default_and_draws_here(pictures):
    app = Host(pictures["wide"], None)
    async with app.run_test(size=(40, 12)) as pilot:
        await pilot.pause()
        view = app.query_one(ImageView)
        assert view.method == "halfblock" and not view.children
        assert isinstance(view.render(), HalfBlockImage)
        assert "▀" in drawn(app)
