"""How images reach the screen: kitty graphics, sixel, or half-block characters.

The choice is made once, by :func:`detect`, before the app takes over the
terminal: asking a terminal what it supports means writing a query and reading
the answer from stdin, which only works while nothing else reads stdin. Once
Textual runs, its input thread would swallow the answer.

Without :func:`detect` (tests, ``App.run_test``) the method stays
``"halfblock"``, which needs nothing from the terminal but colours.

The terminal is asked once (see :mod:`loratui.tui.terminal_query`): sixel where it
says so in its device attributes (xterm ``-ti vt340``, foot, tmux 3.4+ built with
sixel), kitty's placeholders where XTVERSION names kitty 0.28 or newer (older kitty
draws the placeholders as boxes), half-blocks everywhere else. The same answers say
whether a terminal that calls itself plain ``xterm`` has 256 colours.

``LORATUI_IMAGES=kitty|sixel|halfblock|auto`` overrides the choice of method.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Callable, Literal, Mapping, TextIO

from loratui.tui.terminal_query import Answers, ask, version_of, window_cell_size

Method = Literal["kitty", "sixel", "halfblock"]
METHODS: tuple[Method, ...] = ("kitty", "sixel", "halfblock")
ENV_VAR = "LORATUI_IMAGES"
KITTY_PLACEHOLDERS_SINCE = (0, 28)
"""kitty's Unicode placeholders (how a picture sits inside a Textual screen) came in 0.28.0."""
DEFAULT_CELL = (10, 20)
"""Pixels of a cell when the terminal does not say (a VT340's)."""

log = logging.getLogger(__name__)

_method: Method = "halfblock"
_cell: tuple[int, int] = DEFAULT_CELL


def image_method() -> Method:
    """The method :func:`detect` chose; ``"halfblock"`` when it never ran."""
    return _method


def cell_pixels() -> tuple[int, int]:
    """(width, height) of a terminal cell in pixels, as found by :func:`detect`."""
    return _cell


def detect(environ: Mapping[str, str] | None = None, *, stdin: TextIO | None = None,
           stdout: TextIO | None = None, query: Callable[[], Answers] | None = None) -> Method:
    """Choose how to draw images for the rest of this process, asking the terminal if need be.

    Call it once, just before the app is created (it may also choose its colour system).
    """
    global _method, _cell
    environ = os.environ if environ is None else environ
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    is_tty = _is_tty(stdin) and _is_tty(stdout)
    answers = Answers()
    if is_tty and environ.get("NO_COLOR") is None:
        try:
            answers = query() if query is not None else ask(stdin.fileno(), stdout.fileno())
        except Exception:  # noqa: BLE001 - a terminal that cannot be asked is a plain one
            log.debug("the terminal could not be asked", exc_info=True)
    _method = choose_method(environ, is_tty=is_tty, answers=answers)
    if _method == "kitty":
        try:
            _prepare_library()
        except Exception:  # noqa: BLE001 - no textual-image means no kitty graphics
            log.debug("kitty graphics unavailable; using half-blocks", exc_info=True)
            _method = "halfblock"
    if _method == "sixel":
        _cell = answers.cell or _cell_from(environ, stdout) or DEFAULT_CELL
    if _method == "kitty" and environ.get("TMUX"):
        _send_kitty_through_tmux()
    colours = colour_system(environ, answers)
    if colours is not None:
        import textual.constants

        textual.constants.COLOR_SYSTEM = colours  # read by App() when it makes its console
    log.debug("images drawn with %s (terminal: %s)", _method, answers.version or "unnamed")
    return _method


def choose_method(environ: Mapping[str, str], *, is_tty: bool, answers: Answers) -> Method:
    """The rules of :func:`detect`, given what the terminal answered."""
    if environ.get("NO_COLOR") is not None:
        return "halfblock"  # the image view shows a note instead of a grey smear
    if not is_tty:
        # pictures are sent on stdout: redirected, they would land in a file
        return "halfblock"
    wanted = environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if wanted not in (*METHODS, "auto"):
        log.warning("%s=%s is not one of kitty, sixel, halfblock, auto; detecting instead",
                    ENV_VAR, environ[ENV_VAR])
        wanted = "auto"
    if wanted != "auto":
        return wanted  # type: ignore[return-value]
    kitty = version_of(answers, "kitty")
    if kitty is not None and kitty >= KITTY_PLACEHOLDERS_SINCE and not environ.get("TMUX"):
        return "kitty"
    if answers.sixel:
        return "sixel"
    return "halfblock"


def colour_system(environ: Mapping[str, str], answers: Answers) -> str | None:
    """``"256"`` for a terminal that has 256 colours but does not say so in TERM, else None.

    Over SSH ``COLORTERM`` is not passed on and xterm sets ``TERM=xterm``: left alone, the
    half-block pictures would be drawn in 16 colours.
    """
    if environ.get("TEXTUAL_COLOR_SYSTEM") or environ.get("NO_COLOR") is not None:
        return None
    if environ.get("COLORTERM", "").lower() in ("truecolor", "24bit"):
        return None
    if "256color" in environ.get("TERM", ""):
        return None
    return "256" if answers.colours_256 else None


def _cell_from(environ: Mapping[str, str], stdout: TextIO) -> tuple[int, int] | None:
    try:
        cell = window_cell_size(stdout.fileno())
    except (AttributeError, ValueError, OSError):
        cell = None
    width, height = environ.get("TEXTUAL_CELL_WIDTH", ""), environ.get("TEXTUAL_CELL_HEIGHT", "")
    if cell is None and width.isdigit() and height.isdigit():
        cell = int(width), int(height)  # what textual-serve sets for a browser terminal
    return cell if cell and all(cell) else None


def _is_tty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _prepare_library() -> None:
    # Importing the widget module measures the terminal's cells (and, on the way, runs
    # textual-image's own detection); it must happen before Textual owns stdin. Only a
    # terminal that is known to be kitty gets this far.
    importlib.import_module("textual_image.widget")


def tmux_passthrough(sequence: str) -> str:
    """Wrap an escape sequence so tmux (with ``allow-passthrough on``) hands it to the outer terminal."""
    return "\x1bPtmux;" + sequence.replace("\x1b", "\x1b\x1b") + "\x1b\\"


def _send_kitty_through_tmux() -> None:
    """Make textual-image's kitty graphics commands pass through tmux.

    textual-image writes them unwrapped, and tmux swallows unwrapped ones. The text
    placeholders that position the image are ordinary characters and need nothing.
    """
    from textual_image.renderable import tgp

    def send(*, payload: str | None = None, **keys: int | str | None) -> None:
        out = sys.__stdout__
        if out is None:
            raise tgp.TerminalError("sys.__stdout__ is None")
        control = ",".join(f"{k}={v}" for k, v in keys.items() if v is not None)
        out.write(tmux_passthrough(f"\x1b_G{control}{';' + payload if payload else ''}\x1b\\"))
        out.flush()

    tgp._send_tgp_message = send  # the one function tgp.Image sends through
