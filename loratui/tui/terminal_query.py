"""Ask the terminal what it is, in one round trip, before the app owns stdin.

The questions are ones every terminal (and tmux) either answers or ignores, and none of
them changes its state: XTVERSION (name and version), the size of a cell in pixels,
colour register 255 (does it have 256 colours?), and last DA1 (device attributes; ``4``
among them means sixel). Every VT100-compatible terminal answers DA1, so its reply marks
the end of the answers: no waiting out a timeout for the questions a terminal ignores.

No kitty graphics query is sent: inside tmux an unknown APC string becomes the pane's
title. kitty is recognised by its XTVERSION answer instead.
"""

from __future__ import annotations

import os
import re
import select
import time
from dataclasses import dataclass, field

XTVERSION = "\x1b[>0q"
CELL_SIZE = "\x1b[16t"
COLOUR_255 = "\x1b]4;255;?\x1b\\"
DA1 = "\x1b[c"
QUESTIONS = XTVERSION + CELL_SIZE + COLOUR_255 + DA1

_DA1_REPLY = re.compile(r"\x1b\[\?([\d;]*)c")
_XTVERSION_REPLY = re.compile(r"\x1bP>\|([^\x1b]*)\x1b\\")
_CELL_REPLY = re.compile(r"\x1b\[6;(\d+);(\d+)t")
_COLOUR_REPLY = re.compile(r"\x1b\]4;255;rgb:")


@dataclass
class Answers:
    """What the terminal said; empty fields where it said nothing."""

    attributes: set[str] = field(default_factory=set)
    version: str = ""
    """XTVERSION's text, e.g. ``kitty(0.26.5)``, ``XTerm(379)``, ``tmux 3.5a``, ``foot(1.13.1)``."""
    cell: tuple[int, int] | None = None
    """(width, height) of a cell in pixels."""
    colours_256: bool = False
    answered: bool = False
    """DA1 came back (a terminal that answers nothing is treated as a plain one)."""

    @property
    def sixel(self) -> bool:
        return "4" in self.attributes


def parse(reply: str) -> Answers:
    """The answers found in what the terminal wrote back."""
    answers = Answers()
    if m := _DA1_REPLY.search(reply):
        answers.answered = True
        answers.attributes = set(filter(None, m.group(1).split(";")))
    if m := _XTVERSION_REPLY.search(reply):
        answers.version = m.group(1).strip()
    if m := _CELL_REPLY.search(reply):
        height, width = int(m.group(1)), int(m.group(2))
        if width > 0 and height > 0:
            answers.cell = (width, height)
    answers.colours_256 = bool(_COLOUR_REPLY.search(reply))
    return answers


def version_of(answers: Answers, name: str) -> tuple[int, ...] | None:
    """The version numbers of terminal ``name`` if that is the one answering, else None."""
    m = re.match(rf"{re.escape(name)}[ (]v?([\d.]+)", answers.version, re.IGNORECASE)
    if not m:
        return None
    return tuple(int(part) for part in m.group(1).strip(".").split(".") if part)


def ask(stdin_fd: int, stdout_fd: int, timeout: float = 2.0) -> Answers:
    """Send the questions and read the answers, the terminal in raw mode meanwhile.

    Only a terminal that ignores DA1 makes this wait the whole ``timeout``; it is long
    enough for a slow SSH link, whose late answers would otherwise arrive as keys.
    """
    import termios
    import tty

    saved = termios.tcgetattr(stdin_fd)
    try:
        tty.setraw(stdin_fd, termios.TCSANOW)
        os.write(stdout_fd, QUESTIONS.encode())
        reply = b""
        deadline = time.monotonic() + timeout
        while not _DA1_REPLY.search(reply.decode("latin-1")):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdin_fd], [], [], left)[0]:
                break
            chunk = os.read(stdin_fd, 4096)
            if not chunk:
                break
            reply += chunk
    finally:
        termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
    return parse(reply.decode("latin-1"))


def window_cell_size(fd: int) -> tuple[int, int] | None:
    """The cell size from the window size the kernel keeps (pixels / cells), when the terminal set it."""
    import fcntl
    import struct
    import termios

    try:
        rows, cols, width, height = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    if rows and cols and width and height:
        return width // cols, height // rows
    return None
