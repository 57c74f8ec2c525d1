"""Talking to a run from outside it: the dashboard, ``loratui status``, ``stop``, ``logs``."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from loratui.errors import UserError
from loratui.run.record import RunRecord, read_record

CONNECT_TIMEOUT_S = 3.0


class NoLiveRun(UserError):
    pass


def live_record(project: Path) -> RunRecord | None:
    """The record of a run whose process is alive on this machine, or None."""
    record = read_record(Path(project))
    # The socket must be there too: a pid reused by another process after a reboot is no run of ours.
    if record is None or not record.process_alive() or not os.path.exists(record.socket):
        return None
    return record


class RunClient:
    """One connection to a run's socket. ``hello`` is the run's status when we connected."""

    def __init__(self, sock: socket.socket, record: RunRecord, hello: dict[str, Any]) -> None:
        self.sock = sock
        self.record = record
        self.hello = hello
        self._buffer = bytearray()
        self._queued: list[dict[str, Any]] = []

    @classmethod
    def connect(cls, project: Path, timeout: float = CONNECT_TIMEOUT_S) -> RunClient:
        project = Path(project).expanduser().resolve()
        record = read_record(project)
        if record is None:
            raise NoLiveRun(f"no run of {project} was found (no {project}/.loratui/run.json). Start one with "
                            f"`loratui train {project} --detach`.")
        if record.alive_elsewhere():
            raise NoLiveRun(f"the run of {project} runs on {record.host} (process {record.pid}); its socket "
                            f"answers only there: attach from {record.host}.")
        if not record.process_alive():
            raise NoLiveRun(f"the run of {project} is not running (process {record.pid} is gone; it ended as "
                            f"{record.state!r}). `loratui status {project}` shows where it stopped.")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(record.socket)
        except OSError as exc:
            sock.close()
            raise NoLiveRun(f"the run of {project} (process {record.pid}) does not answer on {record.socket}: "
                            f"{exc.strerror or exc}. It may be starting or ending; try again in a moment.") from None
        client = cls(sock, record, {})
        first = client.read(timeout)
        if first is None or first.get("reply") not in ("hello", "refused"):
            client.close()
            raise NoLiveRun(f"the run of {project} did not greet us on {record.socket}; try again in a moment.")
        if first.get("reply") == "refused":
            client.close()
            raise NoLiveRun(f"the run of {project} refused the connection: {first.get('message')}.")
        client.hello = first
        return client

    # ------------------------------------------------------------------ reading
    def read(self, timeout: float | None) -> dict[str, Any] | None:
        """The next line as an object; None on timeout or when the run closed the connection."""
        if self._queued:
            return self._queued.pop(0)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[:newline + 1]
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    return obj
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return None
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return None
            self._buffer += data

    closed = False
    """True once the run closed the connection (it ended, or the process died)."""

    def lines(self, poll_s: float = 0.2) -> Iterator[dict[str, Any] | None]:
        """Every line until the run closes the connection; None every ``poll_s`` while nothing came."""
        while not self.closed:
            yield self.read(poll_s)

    # ------------------------------------------------------------------ commands
    def send(self, command: str) -> None:
        self.sock.sendall(command.encode() + b"\n")

    def request(self, command: str, timeout: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
        """Send a command and wait for its reply; events that arrive meanwhile are kept for ``read``."""
        self.send(command)
        deadline = time.monotonic() + timeout
        skipped: list[dict[str, Any]] = []
        try:
            while time.monotonic() < deadline:
                obj = self.read(deadline - time.monotonic())
                if obj is None:
                    break
                if "reply" in obj and obj.get("reply") != "hello":
                    return obj
                skipped.append(obj)
        finally:
            self._queued = skipped + self._queued
        raise NoLiveRun(f"the run of {self.record.project} did not answer {command!r}; it may be ending.")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RunClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
