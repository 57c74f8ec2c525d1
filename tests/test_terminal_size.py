"""The screen follows the window even when COLUMNS and LINES are exported (as some shells, CI
runners and test harnesses do): a real terminal (tmux), resized after the start."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
REPO = Path(__file__).resolve().parent.parent


def _tmux(server: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", server, *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout


def _drawn_width(server: str) -> int:
    """The widest line on the pane: the dashboard's borders reach its right edge."""
    return max((len(line.rstrip()) for line in _tmux(server, "capture-pane", "-p", "-t", "s").splitlines()),
               default=0)


def _wait_for_width(server: str, width: int, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if _drawn_width(server) == width:
            return
        time.sleep(0.5)
    screen = _tmux(server, "capture-pane", "-p", "-t", "s")
    raise AssertionError(f"the screen never became {width} columns wide:\n{screen}")


def test_the_dashboard_fills_and_follows_the_window_despite_exported_columns(sample_project: Path) -> None:
    env = {k: os.environ[k] for k in ("LORATUI_CACHE_DIR", "LORATUI_CONFIG_DIR", "LORATUI_STATE_DIR",
                                      "OMP_NUM_THREADS", "HF_HUB_OFFLINE") if k in os.environ}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               TERM="xterm-256color", COLUMNS="80", LINES="24")
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    server = f"loratui-size-{os.getpid()}"
    command = f"exec env {prefix} {shlex.quote(sys.executable)} -m loratui open {shlex.quote(str(sample_project))}"
    _tmux(server, "new-session", "-d", "-s", "s", "-x", "120", "-y", "40", command)
    try:
        _wait_for_width(server, 120)
        _tmux(server, "resize-window", "-t", "s", "-x", "100", "-y", "30")
        _wait_for_width(server, 100)
    finally:
        subprocess.run(["tmux", "-L", server, "kill-server"], capture_output=True, timeout=30)
