"""The run's socket server on its own (no torch): who may connect, bad input, slow readers, late joiners."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratui.events import Started, Status, StepDone
from loratui.run.location import MAX_SOCKET_PATH, RunFiles
from loratui.run.server import MAX_LINE, MAX_PENDING, RunServer

REPO = Path(__file__).resolve().parent.parent


def _step(n: int) -> StepDone:
    return StepDone(step=n, total_steps=1000, epoch=0, loss=0.1, lr=1e-4, step_time_s=0.1, data_time_s=0.0,
                    compute_time_s=0.1, optimizer_time_s=0.0, samples_per_s=10.0, ram_mb=1.0)


def _started() -> Started:
    return Started(total_steps=1000, start_step=0, steps_per_epoch=10, num_images=4, device="cpu", family="sd1",
                   precision="fp32", trainable_params=10)


class _Commands:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, name: str) -> dict:
        if name in ("pause", "stop", "status"):
            self.seen.append(name)
            return {"reply": "ok", "command": name}
        return {"reply": "error", "command": name, "message": "unknown command"}


@pytest.fixture
def server(tmp_path: Path):
    commands = _Commands()
    srv = RunServer(tmp_path / "run.sock", commands, lambda: {"state": "training"})
    srv.start()
    srv.commands = commands  # type: ignore[attr-defined]
    yield srv
    srv.close(linger_s=0)


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


def _lines(sock: socket.socket, until: callable, limit_s: float = 5.0) -> list[dict]:
    buf, out = b"", []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        if not data:
            break
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out.append(json.loads(line))
            if until(out[-1]):
                return out
    return out


def test_socket_is_private_and_a_late_joiner_gets_hello_then_the_backlog(server: RunServer) -> None:
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    server.publish(Status(text="loading"))
    server.publish(_started())
    for n in range(1, 6):
        server.publish(_step(n))
    sock = _connect(server.path)
    seen = _lines(sock, lambda o: o.get("step") == 5)
    assert seen[0]["reply"] == "hello" and seen[0]["state"] == "training"
    assert [o.get("event") for o in seen[1:3]] == ["status", "started"]  # in the order they happened
    assert [o["step"] for o in seen if o.get("event") == "step"] == [1, 2, 3, 4, 5]
    server.publish(_step(6))
    assert _lines(sock, lambda o: o.get("step") == 6)[-1]["step"] == 6
    sock.close()


def test_garbage_half_and_oversized_lines_are_answered_and_the_server_keeps_serving(server: RunServer) -> None:
    sock = _connect(server.path)
    _lines(sock, lambda o: o.get("reply") == "hello")
    sock.sendall(b"\x00\xff\xfe garbage\n")
    sock.sendall(b"x" * (MAX_LINE * 30) + b"\n")
    sock.sendall(b'{"command": 42}\n')
    sock.sendall(b"launch_missiles\n")
    sock.sendall(b"pau")  # half a line, finished later
    time.sleep(0.2)
    sock.sendall(b"se\n")
    replies = _lines(sock, lambda o: o.get("command") == "pause")
    errors = [o for o in replies if o.get("reply") == "error"]
    assert len(errors) == 4, replies
    assert any("longer than" in e["message"] for e in errors)
    assert replies[-1] == {"reply": "ok", "command": "pause"}
    assert server.commands.seen == ["pause"]  # type: ignore[attr-defined]
    # A client that half-writes a line and vanishes leaves nothing behind.
    other = _connect(server.path)
    other.sendall(b"sto")
    other.close()
    time.sleep(0.2)
    assert server.commands.seen == ["pause"]  # type: ignore[attr-defined]
    sock.close()


def test_a_client_that_never_reads_is_dropped_and_publishing_never_waits_for_it(server: RunServer) -> None:
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(str(server.path))
    reader = _connect(server.path)
    _lines(reader, lambda o: o.get("reply") == "hello")
    big = Status(text="y" * 2000)
    count = MAX_PENDING // 2000 + 500
    slowest = 0.0
    for _ in range(count):
        t0 = time.perf_counter()
        server.publish(big)
        slowest = max(slowest, time.perf_counter() - t0)
        if _ % 200 == 0:
            reader.setblocking(False)
            try:
                while reader.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
            reader.settimeout(5)
    deadline = time.monotonic() + 5
    while server.client_count > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.client_count == 1  # the lazy one is gone, the reading one stays
    assert slowest < 0.25, f"publish took {slowest:.3f} s"
    lazy.close()
    reader.close()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
def test_a_client_of_another_uid_is_refused_by_its_credentials() -> None:
    # The folder and socket are opened wide here on purpose: the peer check alone must refuse.
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="loratui-peer-", dir="/tmp"))
    folder.chmod(0o755)
    commands = _Commands()
    srv = RunServer(folder / "run.sock", commands, lambda: {"state": "training"})
    srv.start()
    os.chmod(srv.path, 0o666)
    try:
        code = ("import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
                "try:\n    s.sendall(b'stop\\n')\nexcept OSError as e:\n    print('send failed', e)\n"
                "print(s.recv(4096).decode())")
        # An interpreter the other user may run (a venv under /root is closed to it).
        python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)),
                      sys.executable)
        done = subprocess.run([python, "-c", code, str(srv.path)], user="nobody", capture_output=True,
                              text=True, timeout=60, cwd="/")
        assert '"refused"' in done.stdout, done.stdout + done.stderr
        assert commands.seen == []
        mine = _connect(srv.path)
        assert _lines(mine, lambda o: True)[0]["reply"] == "hello"
        mine.close()
    finally:
        srv.close(linger_s=0)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_project_too_deep_for_a_socket_path_uses_the_state_folder(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    state = Path(tempfile.mkdtemp(prefix="lt"))  # a short state folder, as in a usual home
    monkeypatch.setenv("LORATUI_STATE_DIR", str(state))
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = RunFiles(deep).socket_path()
    assert path.is_relative_to(state) and len(os.fsencode(str(path))) <= MAX_SOCKET_PATH
    # A state folder too deep as well: the user's private folder in the temporary directory.
    monkeypatch.setenv("LORATUI_STATE_DIR", str(deep / "state"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    path = RunFiles(deep).socket_path()
    assert path.parent.name == f"loratui-{os.getuid()}" and len(os.fsencode(str(path))) <= MAX_SOCKET_PATH
    short = RunFiles(tmp_path).socket_path()
    assert short == tmp_path / ".loratui" / "run.sock"
