"""How images reach the screen: kitty graphics, sixel, or half-block characters.

The choice is made once, by :func:`detect`, before the app takes over the
terminal: asking a terminal what it supports means writing a query and reading
the answer from stdin, which only works while nothing else reads stdin. Once
Textual runs, its input thread would swallow the answer.

Without :func:`detect` (tests, ``App.run_test``) the method stays
``"halfblock"``, which needs nothing from the terminal but colours.

``LORATUI_IMAGES=kitty|sixel|halfblock|auto`` overrides the detection. Inside
tmux detection is skipped and half-blocks are used unless that variable asks
for more, because tmux drops kitty graphics unless ``allow-passthrough`` is on
and only shows sixel when it was built with sixel support.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Callable, Literal, Mapping, TextIO

Method = Literal["kitty", "sixel", "halfblock"]
METHODS: tuple[Method, ...] = ("kitty", "sixel", "halfblock")
ENV_VAR = "LORATUI_IMAGES"

log = logging.getLogger(__name__)

_method: Method = "halfblock"


def image_method() -> Method:
    """The method :func:`detect` chose; ``"halfblock"`` when it never ran."""
    return _method


def detect(environ: Mapping[str, str] | None = None, *, stdin: TextIO | None = None,
           stdout: TextIO | None = None) -> Method:
    """Choose how to draw images for the rest of this process, asking the terminal if need be.

    Call it once, just before ``App.run()``.
    """
    global _method
    environ = os.environ if environ is None else environ
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    _method = choose_method(environ, is_tty=_is_tty(stdin) and _is_tty(stdout), probe=_probe_terminal,
                            prepare=_prepare_library)
    if _method == "kitty" and environ.get("TMUX"):
        _send_kitty_through_tmux()
    log.debug("images drawn with %s", _method)
    return _method


def choose_method(environ: Mapping[str, str], *, is_tty: bool, probe: Callable[[], Method],
                  prepare: Callable[[], None]) -> Method:
    """The rules of :func:`detect`, with the terminal query passed in.

    ``probe`` asks the terminal what it supports; ``prepare`` readies the library
    for a method the user forced (it measures the terminal's cells). Either may
    raise, which means half-blocks.
    """
    if environ.get("NO_COLOR") is not None:
        return "halfblock"  # the image view shows a note instead of a grey smear
    if not is_tty:
        # kitty images are sent on stdout: redirected, they would land in a file
        return "halfblock"
    wanted = environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if wanted not in (*METHODS, "auto"):
        log.warning("%s=%s is not one of kitty, sixel, halfblock, auto; detecting instead",
                    ENV_VAR, environ[ENV_VAR])
        wanted = "auto"
    if wanted == "halfblock":
        return "halfblock"
    if wanted == "auto" and environ.get("TMUX"):
        return "halfblock"
    try:
        if wanted == "auto":
            return probe()
        prepare()
        return wanted  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - any failure to talk to the terminal means half-blocks
        log.debug("terminal graphics unavailable; using half-blocks", exc_info=True)
        return "halfblock"


def _is_tty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _prepare_library() -> None:
    # Importing the widget module measures the terminal's cells (and, on the way, runs
    # textual-image's own detection); it must happen before Textual owns stdin.
    importlib.import_module("textual_image.widget")


def _probe_terminal() -> Method:
    """What textual-image found: sixel first, then kitty graphics, as it orders them."""
    _prepare_library()
    from textual_image import renderable
    from textual_image.renderable.sixel import Image as SixelRenderable
    from textual_image.renderable.tgp import Image as TGPRenderable

    if renderable.Image is SixelRenderable:
        return "sixel"
    if renderable.Image is TGPRenderable:
        return "kitty"
    return "halfblock"


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
