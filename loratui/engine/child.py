"""Training in a process of its own, driven by the TUI as if it ran in a thread.

Why a process and not the dashboard's thread: the TUI's event loop and the
training loop would share one interpreter lock. A training step on a small
model, or any step at batch 1 on a fast GPU, spends most of its time in Python
between kernels; every repaint of the dashboard then stalls it, and measured
on two cores the stall costs several times the repaint's own CPU time. In a
process of its own the UI costs the run nothing but a core it was not using.
It also keeps a crash in native code (a driver fault, the kernel's OOM killer)
from taking the TUI down with it: the dashboard reports it like any failure.

The process is a run service (``loratui.run.service``) in a session of its
own: the dashboard is one client of its socket, so it can detach (or be
killed) and the run goes on; ``attach_to_run`` is the same relay for a run
started elsewhere (``--detach``, ``--headless``, another dashboard).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
from pathlib import Path
from typing import Callable, Sequence

from loratui.commands import Command, CommandChannel
from loratui.events import Event, Failed, Finished, event_from_dict
from loratui.project import ProjectPaths
from loratui.run.client import NoLiveRun, RunClient
from loratui.run.launch import RunDidNotStart, child_env, start_run
from loratui.run.location import OUTPUT_NAME
from loratui.run.record import read_record

log = logging.getLogger("loratui.engine.child")

__all__ = ["OUTPUT_NAME", "TrainingProcessFailed", "attach_to_run", "child_env", "run_in_child"]


class TrainingProcessFailed(RuntimeError):
    """The training process reported a failure or ended without finishing."""


def run_in_child(project_dir: Path, *, emit: Callable[[Event], None], commands: CommandChannel,
                 resume: bool = False, overrides: Sequence[str] = (), max_steps: int | None = None,
                 on_spawn: Callable[[subprocess.Popen[bytes]], None] | None = None) -> None:
    """Start a run service and relay it; blocks until the run ends or ``Command.DETACH`` is sent.

    Events are handed to ``emit`` in this thread as they arrive; commands sent on
    ``commands`` are forwarded. Raises :class:`TrainingProcessFailed` when the run
    failed (after the Failed event, if the run managed to send one).
    """
    paths = ProjectPaths(Path(project_dir))
    try:
        process, _ = start_run(Path(project_dir), resume=resume, overrides=overrides, max_steps=max_steps)
    except RunDidNotStart as exc:
        emit(Failed(message=str(exc), log_path=str(paths.logs / OUTPUT_NAME)))
        raise TrainingProcessFailed(str(exc)) from None
    if on_spawn is not None:
        on_spawn(process)
    _relay(Path(project_dir), emit=emit, commands=commands, process=process)


def attach_to_run(project_dir: Path, *, emit: Callable[[Event], None], commands: CommandChannel,
                  **_options: object) -> None:
    """Relay a run that is already going (its backlog first); blocks until it ends or we detach."""
    _relay(Path(project_dir), emit=emit, commands=commands, process=None)


def _relay(project: Path, *, emit: Callable[[Event], None], commands: CommandChannel,
           process: subprocess.Popen[bytes] | None) -> None:
    paths = ProjectPaths(project)
    try:
        client = RunClient.connect(project)
    except NoLiveRun as exc:
        emit(Failed(message=str(exc), log_path=str(paths.logs / OUTPUT_NAME)))
        raise TrainingProcessFailed(str(exc)) from None
    detached = threading.Event()
    stop_forwarding = threading.Event()
    forwarder = threading.Thread(target=_forward_commands, args=(commands, client, detached, stop_forwarding),
                                 name="loratui-commands-to-run", daemon=True)
    forwarder.start()
    ended: Event | None = None
    try:
        for obj in client.lines():
            if detached.is_set():
                return
            if obj is None or "event" not in obj:
                continue
            try:
                event = event_from_dict(obj)
            except (KeyError, TypeError, ValueError):
                log.warning("unreadable event from the run: %r", str(obj)[:200])
                continue
            if isinstance(event, (Finished, Failed)):
                ended = event
            emit(event)
    finally:
        stop_forwarding.set()
        forwarder.join(timeout=1)
        client.close()
    if detached.is_set():
        return
    if isinstance(ended, Failed):
        raise TrainingProcessFailed(ended.message)
    if ended is None:
        message = _describe_end(project, process)
        emit(Failed(message=message, log_path=str(paths.logs / OUTPUT_NAME)))
        raise TrainingProcessFailed(message)


def _forward_commands(commands: CommandChannel, client: RunClient, detached: threading.Event,
                      stop: threading.Event) -> None:
    while not stop.is_set():
        command = commands.wait(timeout=0.2)  # blocks without holding the interpreter lock
        if command is None:
            continue
        if command is Command.DETACH:
            detached.set()
            try:
                client.sock.shutdown(socket.SHUT_RDWR)  # wakes the reading loop; the run goes on
            except OSError:
                pass
            return
        try:
            client.send(command.value)
        except OSError:
            return  # the run is gone; the reading loop tells the rest


def _describe_end(project: Path, process: subprocess.Popen[bytes] | None) -> str:
    """Why the connection closed without the run saying it ended."""
    code = None
    if process is not None:
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
    if code is not None and code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (the system's out-of-memory killer sends this)" if -code == signal.SIGKILL else ""
        return f"the training process was killed by {name}{why}. The newest checkpoint is kept; press t to resume."
    if code is not None:
        return f"the training process ended with exit code {code} before finishing."
    record = read_record(project)
    if record is not None and not record.process_alive():
        return (f"the training process ({record.pid}) is gone without finishing. The newest checkpoint is kept; "
                "press t to resume.")
    return "the connection to the training process closed before the run ended."
