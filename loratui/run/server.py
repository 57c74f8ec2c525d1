"""The socket server inside the training process.

One thread with a selector serves every client; the training loop only calls
:meth:`RunServer.publish`, which serialises the event once, appends it to the
backlog and to each client's outgoing buffer under a short lock, and pokes the
thread awake. Nothing the training loop does waits for a client: a client
that stops reading is dropped when its buffer passes a limit, and bad input
(garbage, half lines, oversized lines, unknown commands) is answered or
ignored with a log line.

Protocol, one JSON object per line, both ways:
- the server sends ``{"reply": "hello", …}`` with the run's status, then the
  backlog (recent events, so a late joiner sees the run so far), then every
  new event as the engine's JSON (``{"event": "step", …}``);
- a client sends commands, either as a bare name (``pause``) or
  ``{"command": "pause"}``; each is answered with ``{"reply": "ok"|"error", …}``.
  ``status`` answers ``{"reply": "status", …}``.

Only the user who owns the run may connect: the peer's uid is read from the
socket (SO_PEERCRED) and any other is refused.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from loratui.errors import UserError
from loratui.events import Event, Started

log = logging.getLogger("loratui.run")

MAX_LINE = 4096
"""Longest command line accepted; commands are a word or a small object."""
MAX_PENDING = 8 * 1024 * 1024
"""Bytes queued for one client before it is dropped as not reading."""
BACKLOG_EVENTS = 4000
"""Recent events replayed to a client that connects late (older steps come from metrics.jsonl)."""
MAX_BAD_LINES = 50
"""Unreadable lines from one client before it is disconnected."""
LOG_EVERY_S = 10.0

CommandHandler = Callable[[str], dict[str, Any]]


class SocketInUse(UserError):
    pass


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end (Linux SO_PEERCRED); None where the OS cannot tell."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class _Client:
    def __init__(self, conn: socket.socket, name: str) -> None:
        self.conn = conn
        self.name = name
        self.outgoing = bytearray()
        self.incoming = bytearray()
        self.discarding = False  # inside an oversized line: drop bytes until its end
        self.bad_lines = 0
        self.closing = False  # close once the outgoing buffer is sent
        self.stalled = False  # stopped reading: dropped by the server thread


class RunServer:
    """Listens on ``path``; ``handle_command`` answers each command line (in the server thread)."""

    def __init__(self, path: Path, handle_command: CommandHandler, hello: Callable[[], dict[str, Any]]) -> None:
        self.path = Path(path)
        self.handle_command = handle_command
        self.hello = hello
        self._lock = threading.Lock()
        self._clients: dict[int, _Client] = {}
        self._backlog: deque[tuple[int, bytes]] = deque(maxlen=BACKLOG_EVENTS)
        self._started_line: tuple[int, bytes] | None = None
        self._seq = 0
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._inode: tuple[int, int] | None = None
        self._last_log: dict[str, float] = {}
        self._next_id = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is created 0600: no window where others may connect
        try:
            listener.bind(str(self.path))
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                raise SocketInUse(f"{self.path} is in use by another run of this project. Attach to it with "
                                  f"`loratui attach {self.path.parent.parent}`, or stop it first.") from None
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        info = os.stat(self.path)
        self._inode = (info.st_dev, info.st_ino)
        listener.listen(16)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="loratui-run-server", daemon=True)
        self._thread.start()

    def close(self, linger_s: float = 1.0) -> None:
        """Stop serving; queued events get ``linger_s`` to reach their clients first."""
        deadline = time.monotonic() + linger_s
        while time.monotonic() < deadline:
            with self._lock:
                if not any(c.outgoing for c in self._clients.values()):
                    break
            time.sleep(0.02)
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            for client in list(self._clients.values()):
                self._drop(client, None)
        if self._listener is not None:
            self._listener.close()
        self._remove_socket_file()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _remove_socket_file(self) -> None:
        # Only our own socket: a new run may already have bound a new one at the same path.
        try:
            info = os.stat(self.path)
        except OSError:
            return
        if (info.st_dev, info.st_ino) == self._inode and stat.S_ISSOCK(info.st_mode):
            self.path.unlink(missing_ok=True)

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    # ------------------------------------------------------------------ training side
    def publish(self, event: Event) -> None:
        """Queue an event for every client and the backlog. Called by the training loop: never blocks."""
        self.publish_line(event.to_json(), started=isinstance(event, Started))

    def publish_line(self, text: str, *, started: bool = False) -> None:
        line = text.encode("utf-8", "replace") + b"\n"
        with self._lock:
            self._seq += 1
            entry = (self._seq, line)
            if started:
                self._started_line = entry  # always replayed: a late joiner needs the run's shape
            else:
                self._backlog.append(entry)
            if not self._clients:
                return
            for client in self._clients.values():
                if client.stalled:
                    continue
                client.outgoing += line
                if len(client.outgoing) > MAX_PENDING:
                    client.outgoing.clear()  # its memory back now; the server thread closes it
                    client.stalled = True
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass  # already awake (the pipe is full) or closing

    # ------------------------------------------------------------------ server thread
    def _serve(self) -> None:
        while not self._stop.is_set():
            self._update_interest()
            try:
                ready = self._selector.select(timeout=1.0)
            except OSError:
                continue
            for key, mask in ready:
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                else:
                    client: _Client = key.data
                    if mask & selectors.EVENT_READ:
                        self._read(client)
                    if mask & selectors.EVENT_WRITE and client.conn.fileno() >= 0:
                        self._write(client)

    def _update_interest(self) -> None:
        with self._lock:
            for client in [c for c in self._clients.values() if c.stalled]:
                log.warning("%s stopped reading (over %d bytes queued); disconnected it", client.name, MAX_PENDING)
                self._drop(client, None)
            clients = list(self._clients.values())
        for client in clients:
            if client.conn.fileno() < 0:
                continue
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outgoing else 0)
            try:
                self._selector.modify(client.conn, events, client)
            except (KeyError, ValueError, OSError):
                pass

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        conn.setblocking(False)
        try:
            uid = peer_uid(conn)
        except OSError:
            uid = None
        if uid is not None and uid != os.getuid():
            log.warning("refused a connection to the run's socket from uid %s (only uid %s may connect)",
                        uid, os.getuid())
            try:
                conn.send(json.dumps({"reply": "refused", "message": "this run belongs to another user"})
                          .encode() + b"\n")
            except OSError:
                pass
            conn.close()
            return
        self._next_id += 1
        client = _Client(conn, f"client {self._next_id}")
        try:
            hello = {"reply": "hello", **self.hello()}
        except Exception:  # noqa: BLE001 - a status bug must not take the server down
            log.exception("could not build the status for a new client")
            hello = {"reply": "hello"}
        with self._lock:
            replay = list(self._backlog)
            if self._started_line is not None:
                replay.append(self._started_line)
            replay.sort(key=lambda entry: entry[0])
            client.outgoing += json.dumps(hello).encode() + b"\n"
            for _, line in replay:
                client.outgoing += line
            self._clients[conn.fileno()] = client
        self._selector.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
        log.info("a dashboard or client connected (%d connected)", len(self._clients))

    def _read(self, client: _Client) -> None:
        try:
            data = client.conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            with self._lock:
                self._drop(client, None)
            return
        for line in self._lines(client, data):
            self._answer(client, line)
        if client.bad_lines > MAX_BAD_LINES:
            self._reply(client, {"reply": "error", "message": "too many unreadable lines; disconnecting"})
            client.closing = True

    def _lines(self, client: _Client, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        while data:
            newline = data.find(b"\n")
            chunk, data = (data, b"") if newline < 0 else (data[:newline], data[newline + 1:])
            if client.discarding:
                if newline >= 0:
                    client.discarding = False
                continue
            client.incoming += chunk
            if newline < 0:
                if len(client.incoming) > MAX_LINE:
                    self._say_once("oversized", "ignored a line over %d bytes on the run's socket", MAX_LINE)
                    client.incoming.clear()
                    client.discarding = True
                    client.bad_lines += 1
                    self._reply(client, {"reply": "error", "message": f"line longer than {MAX_LINE} bytes"})
                break
            line, client.incoming = bytes(client.incoming), bytearray()
            if len(line) > MAX_LINE:
                self._say_once("oversized", "ignored a line over %d bytes on the run's socket", MAX_LINE)
                client.bad_lines += 1
                self._reply(client, {"reply": "error", "message": f"line longer than {MAX_LINE} bytes"})
                continue
            lines.append(line)
        return lines

    def _answer(self, client: _Client, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        command = text
        if text.startswith("{"):
            try:
                obj = json.loads(text)
                command = obj.get("command") if isinstance(obj, dict) else None
            except json.JSONDecodeError:
                command = None
        if not isinstance(command, str) or not command.replace("_", "").isalnum():
            client.bad_lines += 1
            self._say_once("garbage", "ignored an unreadable line on the run's socket: %r", text[:80])
            self._reply(client, {"reply": "error", "message": "not a command; send a word such as pause"})
            return
        if command == "detach":
            client.closing = True
            return
        try:
            answer = self.handle_command(command)
        except Exception as exc:  # noqa: BLE001 - a client's command must never end the run
            log.exception("command %r failed", command)
            answer = {"reply": "error", "command": command, "message": str(exc)}
        if answer.get("reply") == "error":
            client.bad_lines += 1
            self._say_once("unknown", "refused a command on the run's socket: %r (%s)", command[:40],
                           answer.get("message", ""))
        self._reply(client, answer)

    def _reply(self, client: _Client, answer: dict[str, Any]) -> None:
        with self._lock:
            client.outgoing += json.dumps(answer).encode() + b"\n"

    def _write(self, client: _Client) -> None:
        with self._lock:
            chunk = bytes(client.outgoing[:262144])
        if not chunk:
            return
        try:
            sent = client.conn.send(chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            with self._lock:
                self._drop(client, None)
            return
        with self._lock:
            del client.outgoing[:sent]
            if client.closing and not client.outgoing:
                self._drop(client, None)

    def _drop(self, client: _Client, why: str | None) -> None:
        """Forget a client (the lock is held)."""
        fd = client.conn.fileno()
        if fd >= 0:
            self._clients.pop(fd, None)
            try:
                self._selector.unregister(client.conn)
            except (KeyError, ValueError, OSError):
                pass
        client.conn.close()
        if why:
            log.info("%s: %s", client.name, why)

    def _say_once(self, key: str, message: str, *args: object) -> None:
        """Log a complaint, at most every few seconds per kind: a flood must not fill the disk."""
        now = time.monotonic()
        if now - self._last_log.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[key] = now
            log.warning(message, *args)
