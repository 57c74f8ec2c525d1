"""Real terminals on an X server of their own, for tests/test_real_terminals.py.

``Display`` is an Xvfb and its screenshots. ``Xterm``, ``TmuxInXterm``, ``FootInWeston`` and
``Kitty`` each start a shell command in one kind of terminal and can press a key in it. foot needs a
Wayland compositor: weston runs as a window on the X server, and foot starts only once
weston answers a Wayland round trip with an output and a shell (a readiness check, not a
fixed sleep, so a loaded machine only makes the wait longer).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from PIL import Image

COLS, ROWS = 160, 48
T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value is not None and value is not False:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Display:
    """An X server of its own, and screenshots of it."""

    def __init__(self, number: int) -> None:
        self.name = f":{number}"
        self.server = subprocess.Popen(["Xvfb", self.name, "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise RuntimeError(f"Xvfb {self.name} did not start")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> np.ndarray:
        subprocess.run(["import", "-display", self.name, "-window", "root", str(path)], check=True, timeout=60)
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)

    def press(self, key: str) -> None:
        """A key through XTEST, to the window under the pointer (no window manager: focus follows it)."""
        subprocess.run(["xdotool", "mousemove", "200", "200", "key", key], env={**os.environ, "DISPLAY": self.name},
                       check=True, timeout=30)

    def close(self) -> None:
        self.server.terminate()
        self.server.wait(timeout=10)


def free_display_number() -> int:
    return next(n for n in range(90 + os.getpid() % 50, 400) if not Path(f"/tmp/.X{n}-lock").exists())


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


XTERM = ["xterm", "-ti", "vt340", "-xrm", "XTerm*decTerminalID: vt340", "-xrm", "XTerm*numColorRegisters: 256",
         "-xrm", "XTerm*sixelScrolling: true", "-b", "0", "-fa", "DejaVu Sans Mono", "-fs", "10",
         "-geometry", f"{COLS}x{ROWS}+0+0"]


class Xterm:
    """xterm as a VT340 with 256 colour registers; ``TERM=xterm`` and no ``COLORTERM``, as over SSH."""

    label = "xterm"

    def __init__(self, display: Display) -> None:
        self.display = display
        self.process: subprocess.Popen | None = None

    def start(self, command: str) -> None:
        env = {**os.environ, "DISPLAY": self.display.name, "TERM": "xterm"}
        for name in ("COLORTERM", "TMUX", "WAYLAND_DISPLAY"):
            env.pop(name, None)
        self.process = subprocess.Popen([*XTERM, "-e", "bash", "-c", command], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def press(self, key: str) -> None:
        self.display.press(key)

    def close(self) -> None:
        _stop(self.process)


def tmux_version(binary: str) -> str:
    return subprocess.run([binary, "-V"], capture_output=True, text=True).stdout.split()[-1]


def tmux_has_sixel(binary: str) -> bool:
    """Built with sixel (Debian's 3.5a from bookworm-backports is; 3.3a is not)."""
    path = shutil.which(binary)
    return path is not None and b"sixel" in Path(path).read_bytes()


class TmuxInXterm(Xterm):
    """A tmux server of its own (no config file) inside that xterm; keys through tmux itself."""

    def __init__(self, display: Display, binary: str) -> None:
        super().__init__(display)
        self.binary = binary
        self.socket = f"loratui-shot-{os.getpid()}"
        self.label = f"tmux-{tmux_version(binary)}"

    def start(self, command: str) -> None:
        super().start(f"{shlex.quote(self.binary)} -L {self.socket} -f /dev/null new-session {shlex.quote(command)}")

    def press(self, key: str) -> None:
        tmux_key = key.replace("ctrl+", "C-")
        subprocess.run([self.binary, "-L", self.socket, "send-keys", tmux_key], check=True, timeout=30)

    def pane_title(self) -> str:
        return subprocess.run([self.binary, "-L", self.socket, "display-message", "-p", "#{pane_title}"],
                              capture_output=True, text=True).stdout

    def close(self) -> None:
        subprocess.run([self.binary, "-L", self.socket, "kill-server"], capture_output=True)
        super().close()


def wayland_globals(path: Path, timeout: float = 10.0) -> set[str] | None:
    """The interfaces a Wayland compositor announces on ``path``, once it answers a round trip; else None.

    The wire protocol is small enough to speak here: wl_display.get_registry (opcode 1) and
    wl_display.sync (opcode 0), then read wl_registry.global events until the callback's done.
    """
    registry, callback = 2, 3
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(struct.pack("=III", 1, (12 << 16) | 1, registry) + struct.pack("=III", 1, 12 << 16, callback))
            data, found = b"", set()
            while True:
                while len(data) >= 8:
                    sender, size_opcode = struct.unpack_from("=II", data)
                    size, opcode = size_opcode >> 16, size_opcode & 0xFFFF
                    if len(data) < size:
                        break
                    if sender == registry and opcode == 0:  # global(name, interface, version)
                        length = struct.unpack_from("=I", data, 12)[0]
                        found.add(data[16:16 + length - 1].decode("ascii", "replace"))
                    elif sender == callback:
                        return found
                    data = data[size:]
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None


class FootInWeston:
    """foot (sixel) in weston, weston a window on the X server (pixman: no GL needed)."""

    label = "foot"

    def __init__(self, display: Display, runtime: Path, log: Path) -> None:
        self.display = display
        runtime.mkdir(mode=0o700, exist_ok=True)
        self.env = {**os.environ, "DISPLAY": display.name, "XDG_RUNTIME_DIR": str(runtime)}
        for name in ("COLORTERM", "TMUX", "WAYLAND_DISPLAY"):
            self.env.pop(name, None)
        self.log = log
        self.weston: subprocess.Popen | None = None
        self.foot: subprocess.Popen | None = None
        self.socket = runtime / "wl-loratui"

    def start(self, command: str) -> None:
        with open(self.log, "wb") as log:
            self.weston = subprocess.Popen(
                ["weston", "--backend=x11-backend.so", "--use-pixman", "--width=1800", "--height=1050",
                 f"--socket={self.socket.name}", "--idle-time=0"], env=self.env, stdout=log, stderr=log)

        def ready() -> bool | None:
            if self.weston.poll() is not None:
                raise AssertionError(f"weston exited ({self.weston.returncode}):\n{self.log.read_text()[-2000:]}")
            found = wayland_globals(self.socket) if self.socket.exists() else None
            return found is not None and {"wl_output", "xdg_wm_base", "wl_shm"} <= found or None

        # A generous deadline: on a busy machine weston's start-up can take tens of seconds.
        wait_for(ready, 180, "weston to answer on its Wayland socket")
        self.foot = subprocess.Popen(["foot", "-o", "font=DejaVu Sans Mono:size=10",
                                      f"--window-size-chars={COLS}x{ROWS}", "bash", "-c", command],
                                     env={**self.env, "WAYLAND_DISPLAY": self.socket.name},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def press(self, key: str) -> None:
        # weston takes X keyboard focus when the pointer enters its window; foot, its newest window, has weston's.
        self.display.press(key)

    def close(self) -> None:
        _stop(self.foot)
        _stop(self.weston)


def kitty_version() -> tuple[int, ...] | None:
    if shutil.which("kitty") is None:
        return None
    out = subprocess.run(["kitty", "--version"], capture_output=True, text=True).stdout.split()
    return tuple(int(p) for p in out[1].split(".")) if len(out) > 1 else None


class Kitty:
    """kitty on the X server, drawing with Mesa's software OpenGL (Xvfb has no GPU)."""

    def __init__(self, display: Display, log: Path) -> None:
        self.display = display
        self.log = log
        self.version = kitty_version() or ()
        self.label = f"kitty-{'.'.join(map(str, self.version))}"
        self.process: subprocess.Popen | None = None

    def start(self, command: str) -> None:
        env = {**os.environ, "DISPLAY": self.display.name, "LIBGL_ALWAYS_SOFTWARE": "1"}
        for name in ("COLORTERM", "TMUX", "WAYLAND_DISPLAY", "TERM"):
            env.pop(name, None)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["kitty", "--config", "NONE", "-o", "font_family=DejaVu Sans Mono", "-o", "font_size=10",
                 "-o", f"initial_window_width={COLS}c", "-o", f"initial_window_height={ROWS}c",
                 "-o", "remember_window_size=no", "bash", "-c", command], env=env, stdout=log, stderr=log)

    def press(self, key: str) -> None:
        self.display.press(key)

    def close(self) -> None:
        _stop(self.process)


def stop_apps(folder: Path) -> None:
    """End the apps whose pid ``*.app-pid`` files in ``folder`` hold.

    Closing a terminal does not end them: ``script`` passes its end of input on as a key, which
    a full-screen app in raw mode reads as Ctrl+D, and keeps waiting for its child.
    """
    for pid_file in folder.glob("*.app-pid"):
        try:
            pid = int(pid_file.read_text())
            if b"loratui" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue  # ended already, and the number is someone else's now
        except (OSError, ValueError):
            continue
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
            if not Path(f"/proc/{pid}").exists():
                break
