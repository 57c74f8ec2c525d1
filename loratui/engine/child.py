"""Training in a child process, driven by the TUI as if it ran in a thread.

Why a process and not the dashboard's thread: the TUI's event loop and the
training loop would share one interpreter lock. A training step on a small
model, or any step at batch 1 on a fast GPU, spends most of its time in Python
between kernels; every repaint of the dashboard then stalls it, and measured
on two cores the stall costs several times the repaint's own CPU time. In a
child process the UI costs the run nothing but a core it was not using. It
also keeps a crash in native code (a driver fault, the kernel's OOM killer)
from taking the TUI down with it: the dashboard reports it like any failure.

The protocol is the engine's own: events as JSON lines on a pipe the parent
reads, commands as their names, one per line, on the child's stdin. The child
runs in its own session, so a terminal's SIGINT or SIGHUP does not reach it;
if the parent goes away its stdin closes and the child stops the way the Stop
key does, with a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Callable, Sequence

from loratui.commands import Command, CommandChannel
from loratui.events import Event, Failed, event_from_dict
from loratui.project import ProjectPaths

log = logging.getLogger("loratui.engine.child")

OUTPUT_NAME = "engine-output.log"
"""The child's own stdout and stderr (library warnings, native crash reports), next to train.log."""


class TrainingProcessFailed(RuntimeError):
    """The training process reported a failure or ended without finishing."""


def run_in_child(project_dir: Path, *, emit: Callable[[Event], None], commands: CommandChannel,
                 resume: bool = False, overrides: Sequence[str] = (), max_steps: int | None = None,
                 on_spawn: Callable[[subprocess.Popen[bytes]], None] | None = None) -> None:
    """Run ``run_training`` in a child process; blocks until it ends, like ``run_training``.

    Events are handed to ``emit`` in this thread as they arrive; commands sent on
    ``commands`` are forwarded. Raises :class:`TrainingProcessFailed` when the run
    failed (after the Failed event, if the child managed to send one).
    """
    paths = ProjectPaths(Path(project_dir))
    paths.logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "loratui.engine.child", str(project_dir)]
    if resume:
        argv.append("--resume")
    if max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    for item in overrides:
        argv += ["--set", item]
    read_fd, write_fd = os.pipe()
    argv += ["--events-fd", str(write_fd)]
    try:
        with open(paths.logs / OUTPUT_NAME, "ab") as output:
            child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=output, stderr=output, env=child_env(),
                                     pass_fds=(write_fd,), start_new_session=True)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child has its copy; ours would keep the pipe open after it exits
    if on_spawn is not None:
        on_spawn(child)
    stop_forwarding = threading.Event()
    forwarder = threading.Thread(target=_forward_commands, args=(commands, child.stdin, stop_forwarding),
                                 name="loratui-commands-to-child", daemon=True)
    forwarder.start()
    failed: Failed | None = None
    try:
        with os.fdopen(read_fd, "r", encoding="utf-8") as events:
            for line in events:
                try:
                    event = event_from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    log.warning("unreadable event from the training process: %r", line[:200])
                    continue
                if isinstance(event, Failed):
                    failed = event
                emit(event)
        code = child.wait()
    finally:
        # Also when this thread is torn down: the child's stdin closes, so it saves and stops.
        stop_forwarding.set()
        forwarder.join(timeout=1)
        if child.stdin is not None:
            try:
                child.stdin.close()
            except OSError:
                pass
    if failed is not None:
        raise TrainingProcessFailed(failed.message)
    if code != 0:
        message = _describe_exit(code)
        emit(Failed(message=message, log_path=str(paths.logs / OUTPUT_NAME)))
        raise TrainingProcessFailed(message)


def child_env() -> dict[str, str]:
    """This process's environment, with this very loratui importable (also from an uninstalled tree)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _forward_commands(commands: CommandChannel, pipe: IO[bytes] | None, stop: threading.Event) -> None:
    while not stop.is_set() and pipe is not None:
        command = commands.wait(timeout=0.2)  # blocks without holding the interpreter lock
        if command is None:
            continue
        try:
            pipe.write(f"{command.value}\n".encode())
            pipe.flush()
        except (BrokenPipeError, ValueError, OSError):
            return  # the child is gone; its events pipe tells the rest


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (the system's out-of-memory killer sends this)" if -code == signal.SIGKILL else ""
        return f"the training process was killed by {name}{why}. The newest checkpoint is kept; press t to resume."
    return f"the training process ended with exit code {code} before finishing."


# The child's side -------------------------------------------------------------------------


class _EventWriter:
    """Writes events as JSON lines; a vanished reader means the TUI is gone: stop and save."""

    def __init__(self, fd: int, commands: CommandChannel) -> None:
        self._file = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self._commands = commands
        self._broken = False

    def __call__(self, event: Event) -> None:
        if self._broken:
            return
        with self._lock:
            try:
                self._file.write(event.to_json() + "\n")
                self._file.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._broken = True
                self._commands.send(Command.STOP)


def _read_commands(commands: CommandChannel) -> None:
    for line in sys.stdin:
        try:
            commands.send(line.strip())
        except ValueError:
            log.warning("unknown command from the TUI: %r", line.strip())
    commands.send(Command.STOP)  # stdin closed: the TUI is gone, end the run properly


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loratui.engine.child",
                                 description="Train a project for the TUI (it starts this itself).")
    ap.add_argument("project_dir", type=Path)
    ap.add_argument("--events-fd", type=int)
    ap.add_argument("--events-fifo", type=Path, help=argparse.SUPPRESS)  # rank 0 of several processes
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the TUI sends Stop or Abort; keys never reach here
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from loratui.engine.distributed import is_main_process, launched_distributed
    from loratui.engine.runner import prepare_config, run_training

    if not launched_distributed():
        from loratui.engine.launch import launch_for_child, processes_to_start

        try:
            processes = processes_to_start(prepare_config(args.project_dir, args.overrides))
        except Exception:  # noqa: BLE001 - run_training below reports a bad config as usual
            processes = 1
        if processes > 1:
            child_args = [str(args.project_dir), *(["--resume"] if args.resume else []),
                          *(["--max-steps", str(args.max_steps)] if args.max_steps is not None else [])]
            for item in args.overrides:
                child_args += ["--set", item]
            fifo = ProjectPaths(args.project_dir).logs / f".events-{os.getpid()}.fifo"
            return launch_for_child(processes, child_args, args.events_fd, fifo,
                                    echo=lambda line: print(line, file=sys.stderr, flush=True))
    if args.events_fd is None and args.events_fifo is None:
        ap.error("--events-fd is required")
    commands = CommandChannel()
    if is_main_process():
        fd = args.events_fd if args.events_fifo is None else os.open(args.events_fifo, os.O_WRONLY)
        emit: Callable[[Event], None] = _EventWriter(fd, commands)
        threading.Thread(target=_read_commands, args=(commands,), name="loratui-commands", daemon=True).start()
    else:
        def emit(event: Event) -> None:  # rank 0 speaks for the run; a failure here lands in the output log
            if isinstance(event, Failed):
                print(event.message, file=sys.stderr, flush=True)
    try:
        run_training(args.project_dir, emit=emit, commands=commands, resume=args.resume,
                     overrides=args.overrides, max_steps=args.max_steps)
    except Exception:  # noqa: BLE001 - run_training has already sent Failed and logged the traceback
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
