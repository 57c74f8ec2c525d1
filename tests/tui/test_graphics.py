"""Images by kitty graphics, sixel or half-blocks: which one a terminal gets, and what each sends.

No test here asks a real terminal anything. textual-image queries the terminal when it is
first imported, and only when stdout is a terminal; the ``offline_library`` fixture replaces
stdout with a buffer first, which also catches the kitty graphics commands it writes there.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from textual.app import App, ComposeResult
from textual._compositor import CompositorUpdate
from textual.geometry import Region
from textual.widgets import Label

from loratui.tui import graphics
from loratui.tui.graphics import choose_method, colour_system, detect, image_method, tmux_passthrough
from loratui.tui.terminal_query import DA1, QUESTIONS, Answers, parse, version_of
from loratui.tui.modals import ErrorModal
from loratui.tui.screen_diff import ScreenDiff
from loratui.tui.widgets.image_view import HalfBlockImage, ImageView

PLACEHOLDER = chr(0x10EEEE)
"""The character kitty replaces with a piece of the image (one per cell)."""


def answered(version: str = "", attributes: str = "1;2", colours_256: bool = False) -> Answers:
    return Answers(attributes=set(attributes.split(";")), version=version, colours_256=colours_256,
                   answered=True)


def choose(env: dict[str, str], answers: Answers | None = None, *, is_tty: bool = True) -> str:
    return choose_method(env, is_tty=is_tty, answers=answers or Answers())


XTERM_VT340 = answered("XTerm(379)", "63;1;2;4;6;9;15;16;22;28")
KITTY_26 = answered("kitty(0.26.5)", "62;c")
KITTY_35 = answered("kitty(0.35.2)", "62;52;c")
TMUX_SIXEL = answered("tmux 3.5a", "1;2;4")
TMUX_PLAIN = answered("tmux 3.3a", "1;2")

# -- which method ---------------------------------------------------------------


@pytest.mark.parametrize(("answers", "env", "method"), [
    (XTERM_VT340, {}, "sixel"),
    (answered("foot(1.13.1)", "62;4;22"), {}, "sixel"),
    (answered("XTerm(379)", "1;2"), {}, "halfblock"),  # xterm without -ti vt340
    (KITTY_35, {}, "kitty"),
    (KITTY_26, {}, "halfblock"),  # placeholders need 0.28: older kitty draws boxes
    (TMUX_SIXEL, {"TMUX": "/tmp/tmux-0/default,1,0"}, "sixel"),  # tmux 3.4+ built with sixel says so
    (TMUX_PLAIN, {"TMUX": "/tmp/tmux-0/default,1,0"}, "halfblock"),
    (Answers(), {}, "halfblock"),  # a terminal that answers nothing
])
def test_a_terminal_gets_what_its_answers_allow(answers, env, method):
    assert choose(env, answers) == method
    assert choose({**env, "LORATUI_IMAGES": "auto"}, answers) == method


@pytest.mark.parametrize("forced", ["kitty", "sixel", "halfblock"])
def test_the_environment_forces_a_method(forced):
    assert choose({"LORATUI_IMAGES": forced.upper()}, TMUX_PLAIN) == forced


def test_an_unknown_value_is_detected_as_auto(caplog):
    assert choose({"LORATUI_IMAGES": "iterm"}, XTERM_VT340) == "sixel"
    assert "LORATUI_IMAGES=iterm" in caplog.text


@pytest.mark.parametrize("env", [{}, {"LORATUI_IMAGES": "kitty"}])
def test_not_a_terminal_means_halfblock(env):
    assert choose(env, KITTY_35, is_tty=False) == "halfblock"


@pytest.mark.parametrize("env", [{}, {"LORATUI_IMAGES": "kitty"}])
def test_no_color_means_no_graphics(env):
    assert choose({"NO_COLOR": "1", **env}, KITTY_35) == "halfblock"


@pytest.mark.parametrize(("version", "parsed"), [
    ("kitty(0.26.5)", (0, 26, 5)), ("kitty(0.28.0)", (0, 28, 0)), ("XTerm(379)", None), ("", None)])
def test_kitty_version_is_read_from_xtversion(version, parsed):
    assert version_of(answered(version), "kitty") == parsed


def test_the_answers_are_parsed_from_one_reply():
    reply = ("\x1bP>|XTerm(379)\x1b\\" "\x1b[6;17;9t" "\x1b]4;255;rgb:eeee/eeee/eeee\x1b\\"
             "\x1b[?63;1;2;4;6;9;15;16;22;28c")
    answers = parse(reply)
    assert answers.version == "XTerm(379)" and answers.cell == (9, 17)
    assert answers.sixel and answers.colours_256 and answers.answered
    plain = parse("\x1b[?1;2c")
    assert not plain.sixel and not plain.colours_256 and plain.version == "" and plain.cell is None


def test_the_questions_change_nothing_in_tmux():
    # No kitty graphics query (tmux would make it the pane title), no mode switches:
    # only requests that are answered or ignored.
    assert "\x1b_G" not in QUESTIONS
    assert QUESTIONS.endswith(DA1)  # answered by every terminal: it ends the wait
    assert set(re.findall(r"\x1b(.)", QUESTIONS)) <= {"[", "]", "\\"}


@pytest.mark.parametrize(("env", "answers", "colours"), [
    ({"TERM": "xterm"}, answered("XTerm(379)", colours_256=True), "256"),  # SSH drops COLORTERM
    ({"TERM": "xterm"}, answered("", colours_256=False), None),
    ({"TERM": "xterm-256color"}, answered("", colours_256=True), None),  # Textual sees it already
    ({"TERM": "xterm", "COLORTERM": "truecolor"}, answered("", colours_256=True), None),
    ({"TERM": "xterm", "TEXTUAL_COLOR_SYSTEM": "standard"}, answered("", colours_256=True), None),
])
def test_a_256_colour_terminal_gets_256_colours(env, answers, colours):
    assert colour_system(env, answers) == colours


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


def test_detect_decides_for_the_whole_process(monkeypatch):
    import textual.constants

    monkeypatch.setattr(graphics, "_method", "halfblock")
    monkeypatch.setattr(graphics, "_cell", graphics.DEFAULT_CELL)
    monkeypatch.setattr(textual.constants, "COLOR_SYSTEM", "auto")
    asked = []

    def query() -> Answers:
        asked.append(1)
        return parse("\x1b[6;17;9t\x1b]4;255;rgb:0/0/0\x07\x1b[?63;4c")

    assert image_method() == "halfblock"
    assert detect({}, stdin=FakeTerminal(), stdout=io.StringIO(), query=query) == "halfblock"  # redirected
    assert asked == []
    assert detect({"TERM": "xterm"}, stdin=FakeTerminal(), stdout=FakeTerminal(), query=query) == "sixel"
    assert image_method() == "sixel" and graphics.cell_pixels() == (9, 17)
    assert ImageView().method == "sixel"
    assert textual.constants.COLOR_SYSTEM == "256"


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


class SixelHost(App):
    """The image view beside a line of text, and everything Textual sends passed through a ScreenDiff."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.diff = ScreenDiff()
        self.sent: list[str] = []

    def compose(self) -> ComposeResult:
        yield Label("step 0", id="counter")
        yield ImageView(self.path, method="sixel")

    def _display(self, screen, renderable) -> None:
        if isinstance(renderable, CompositorUpdate):
            self.sent.append(self.diff.update(renderable, self.console, *self.size))

    def take(self) -> str:
        sent, self.sent = "".join(self.sent), []
        return sent


def sixels(sent: str) -> list[tuple[tuple[int, int], str]]:
    """((column, row), DCS string) of each sixel picture in the bytes, at the cursor move before it."""
    found = []
    for m in re.finditer(r"\x1b\[(\d+);(\d+)H(\x1bP[^\x1b]*\x1b\\)", sent):
        found.append(((int(m.group(2)) - 1, int(m.group(1)) - 1), m.group(3)))
    return found


async def settle(app: App, pilot) -> None:
    """Wait for the pictures being encoded in worker threads, and the repaint after them."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def test_sixel_picture_is_sent_once_fitted_and_centred(pictures, monkeypatch):
    monkeypatch.setattr(graphics, "_cell", (10, 20))
    app = SixelHost(pictures["tall"])
    async with app.run_test(size=(40, 13)) as pilot:
        await settle(app, pilot)
        [(where, data)] = sixels(app.take())
        # 40×80 px into 40×12 cells of 10×20 px: 120×240 px, 12 cells wide, centred; row 1 (below the label)
        assert where == (14, 1) and '"1;1;120;240' in data
        for step in range(1, 6):
            app.query_one("#counter", Label).update(f"step {step}")
            await pilot.pause()
            sent = app.take()
            # only the cell that changed: the digit, placed after "step "
            assert sent.startswith("\x1b[1;6H") and f"m{step}\x1b" in sent and "\x1bP" not in sent
        app.screen.refresh()  # a repaint of everything: still nothing to send
        await pilot.pause()
        assert app.take() == ""

        app.query_one(ImageView).path = pictures["wide"]
        await settle(app, pilot)
        [(where, data)] = sixels(app.take())
        # 96×48 px: 400 px wide, 200 tall rounded down to whole sixel bands (198): 10 rows, no padding
        assert where == (0, 1) and '"1;1;400;198' in data

        odd = pictures["wide"].with_name("odd.png")
        Image.linear_gradient("L").resize((73, 41)).convert("RGB").save(odd)
        app.query_one(ImageView).path = odd
        await settle(app, pilot)
        [(where, data)] = sixels(app.take())
        # 400×222 px fills whole cells (40×12: 400×240, in whole bands), the margin in the pane's colour:
        # tmux stretches a partly covered last cell into a strip beside the picture
        assert where == (0, 1) and '"1;1;400;240' in data


async def test_a_covered_picture_is_sent_again_when_uncovered(pictures, monkeypatch):
    monkeypatch.setattr(graphics, "_cell", (10, 20))
    app = SixelHost(pictures["wide"])
    async with app.run_test(size=(40, 13)) as pilot:
        await settle(app, pilot)
        assert len(sixels(app.take())) == 1
        app.push_screen(ErrorModal("Training failed", "out of memory", "/tmp/log"))
        await pilot.pause()
        covering = app.take()
        assert "out of memory" in covering and "\x1bP" not in covering
        app.pop_screen()
        await pilot.pause()
        assert len(sixels(app.take())) == 1  # uncovered: sent again, once


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


def test_ask_reads_a_real_pty_up_to_the_da1_answer():
    import pty
    import threading
    import time

    from loratui.tui.terminal_query import ask

    master, slave = pty.openpty()
    seen = bytearray()

    def terminal() -> None:
        while not seen.endswith(DA1.encode()):
            seen.extend(os.read(master, 100))
        os.write(master, b"\x1bP>|XTerm(379)\x1b\\\x1b[6;20;10t\x1b[?63;1;2;4c")

    threading.Thread(target=terminal, daemon=True).start()
    started = time.monotonic()
    answers = ask(slave, slave, timeout=10)
    assert time.monotonic() - started < 5  # DA1 ends the wait, not the timeout
    assert bytes(seen) == QUESTIONS.encode()
    assert answers.version == "XTerm(379)" and answers.sixel and answers.cell == (10, 20)
    silent_master, silent = pty.openpty()
    assert ask(silent, silent, timeout=0.2) == Answers()  # a terminal that answers nothing: plain
    for fd in (master, slave, silent_master, silent):
        os.close(fd)
