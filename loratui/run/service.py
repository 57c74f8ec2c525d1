"""A training process as a service: the engine plus its socket, record and end-of-run notification.

``serve_run`` is what every run goes through: ``--headless`` calls it in the
foreground, ``--detach`` and the dashboard start ``python -m
loratui.run.service`` in a session of its own (so closing the terminal or
losing SSH does not reach it) and talk to it through the socket.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from loratui.commands import Command, CommandChannel
from loratui.errors import UserError
from loratui.events import CheckpointSaved, Event, EventFanout, EventSink, Failed, Finished, NotifyDone, \
    NotifyPending, Paused, Resumed, Started, Status
from loratui.project import ProjectPaths, RunLock
from loratui.run import notify
from loratui.run.client import live_record
from loratui.run.location import RunFiles, private_folder
from loratui.run.record import FINAL_STATES, RunRecord, config_text_digest, write_record
from loratui.run.server import RunServer, SocketInUse
from loratui.run.tracker import RunTracker

log = logging.getLogger("loratui.run")

ENGINE_COMMANDS = {c.value for c in Command} - {Command.DETACH.value, Command.CANCEL_NOTIFY.value}
PAUSE_CHECK_S = 5.0


def resume_command(project: Path) -> str:
    return f"loratui train {project} --detach --resume"


class RunService:
    """Everything around the engine in a run process; the engine itself is ``run_training``."""

    def __init__(self, project: Path, commands: CommandChannel, settings: notify.NotifySettings) -> None:
        self.project = project
        self.paths = ProjectPaths(project)
        self.files = RunFiles(project)
        self.commands = commands
        self.settings = settings
        self.tracker = RunTracker(metrics_path=self.paths.metrics)
        self.server: RunServer | None = None
        self.record: RunRecord | None = None
        self.cancel_notify = threading.Event()
        self._ended = threading.Event()
        self._notified_pause: float | None = None
        self._checkpoint_at = 0.0
        self._pause_watch: threading.Thread | None = None
        self.lock = RunLock(self.paths)

    # ------------------------------------------------------------------ start and end
    def take_lock(self) -> None:
        """The project's run lock (``ProjectLocked`` when another run holds it); held until ``close``."""
        if not self.lock.held:
            self.lock.acquire()

    def open(self) -> None:
        """Take the project's lock and socket and write the record; refuses a project that already has a
        live run."""
        self.take_lock()
        private_folder(self.files.folder)
        path = self.files.socket_path()
        if path != self.files.preferred_socket:
            private_folder(path.parent)
            log.info("the project path is too long for a socket; using %s", path)
        _remove_stale_socket(path)
        self.server = RunServer(path, self.handle_command, self.status)
        self.server.start()
        self.record = RunRecord(
            project=str(self.project), pid=os.getpid(), host=socket.gethostname(),
            started_at=self.tracker.started_at, config_digest=config_text_digest(self.project), socket=str(path),
            resume_command=resume_command(self.project), cost_per_hour=self.settings.cost_per_hour)
        write_record(self.record)
        if self.settings.paused_minutes > 0:
            self._pause_watch = threading.Thread(target=self._watch_pause, name="loratui-pause-watch", daemon=True)
            self._pause_watch.start()

    def close(self) -> None:
        self._ended.set()
        if self.server is not None:
            self.server.close()
        if self.record is not None and self.record.state not in FINAL_STATES:
            self._update_record("failed", message="the run ended without saying how")
        self.lock.release()  # last: once it is free, the record above is the whole truth

    # ------------------------------------------------------------------ events from the engine
    def on_event(self, event: Event) -> None:
        """Every engine event: into the status, out on the socket, and state changes into the record."""
        self.tracker.apply(event)
        if isinstance(event, CheckpointSaved):
            self._checkpoint_at = time.time()
        if self.server is not None:
            self.server.publish(event)
        if isinstance(event, (Started, Paused, Resumed, Finished, Failed)):
            self._update_record(self.tracker.state, message=self.tracker.message)

    def _update_record(self, state: str, *, message: str = "") -> None:
        if self.record is None:
            return
        r = self.record
        r.state, r.step, r.total_steps = state, self.tracker.step, self.tracker.total_steps
        r.message, r.lora_path = message or r.message, self.tracker.lora_path or r.lora_path
        if state in FINAL_STATES:
            r.ended_at = time.time()
        try:
            write_record(r)
        except OSError as exc:
            log.warning("could not update the run record: %s", exc)

    def publish(self, event: Event) -> None:
        if self.server is not None:
            self.server.publish(event)

    # ------------------------------------------------------------------ commands from clients
    def handle_command(self, name: str) -> dict[str, Any]:
        """Answer one client command (in the server thread)."""
        if name == "status":
            return {"reply": "status", **self.status()}
        if name == "cancel_notify":
            self.cancel_notify.set()
            return {"reply": "ok", "command": name}
        if name in ENGINE_COMMANDS:
            if self.tracker.state in FINAL_STATES:
                return {"reply": "error", "command": name, "message": f"the run has ended ({self.tracker.state})"}
            self.commands.send(name)
            if name == Command.STOP.value:
                self._update_record("stopping")
            return {"reply": "ok", "command": name}
        known = ", ".join(sorted(ENGINE_COMMANDS | {"status", "cancel_notify", "detach"}))
        return {"reply": "error", "command": name[:40], "message": f"unknown command; known: {known}"}

    def status(self) -> dict[str, Any]:
        snap = self.tracker.snapshot()
        rate = self.settings.cost_per_hour
        snap.update({
            "project": str(self.project), "pid": os.getpid(), "host": socket.gethostname(),
            "cost_per_hour": rate or None,
            "cost": notify.cost_so_far(rate, self.tracker.started_at),
            "cost_projected": notify.projected_cost(rate, self.tracker.started_at, snap["eta_s"]),
            "dashboards": self.server.client_count if self.server is not None else 0,
            "resume_command": resume_command(self.project),
        })
        return snap

    # ------------------------------------------------------------------ notification
    def notify_end(self, status: str, *, message: str = "") -> None:
        """After the final files are on disk: count down (cancellable from a dashboard), then notify."""
        if not self.settings.wants(status):
            return
        lora = self.tracker.lora_path
        if lora:
            notify.fsync_file(Path(lora))
        self.cancel_notify.clear()
        if self.settings.countdown_s > 0:
            self.publish(NotifyPending(status=status, seconds=self.settings.countdown_s,
                                       what=self.settings.describe()))
            if self.cancel_notify.wait(self.settings.countdown_s):
                log.info("notification cancelled from a dashboard")
                self.publish(NotifyDone(status=status, ok=True, detail="cancelled from a dashboard", cancelled=True))
                return
        data = notify.payload(project=self.project, status=status, step=self.tracker.step,
                              total_steps=self.tracker.total_steps, lora_path=lora, message=message,
                              cost=notify.cost_so_far(self.settings.cost_per_hour, self.tracker.started_at))
        ok, detail = notify.send(self.settings, data)
        self.publish(NotifyDone(status=status, ok=ok, detail=detail))

    def _watch_pause(self) -> None:
        """A run paused past notify.paused_minutes saves a checkpoint, then notifies (once per pause)."""
        limit = self.settings.paused_minutes * 60
        while not self._ended.wait(PAUSE_CHECK_S):
            since = self.tracker.paused_since
            if since is None or since == self._notified_pause or time.time() - since < limit:
                continue
            self._notified_pause = since
            log.info("paused for %.0f minutes: saving a checkpoint and notifying", (time.time() - since) / 60)
            asked = time.time()
            self.commands.send(Command.CHECKPOINT_NOW)  # a paused engine still serves commands
            while self._checkpoint_at < asked and not self._ended.wait(0.5):
                if time.time() - asked > 600 or self.tracker.paused_since != since:
                    break
            if self.tracker.paused_since == since:
                self.notify_end("paused", message=f"paused for {int((time.time() - since) // 60)} minutes")


def _remove_stale_socket(path: Path) -> None:
    """A socket file nobody listens on is left by a killed run: remove it. One that answers is in use."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        log.info("removed a stale socket left by an earlier run: %s", path)
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SocketInUse(f"another process answers on {path}; is this project already training? "
                      f"`loratui status {path.parent.parent}` tells.")


def serve_run(project_dir: Path, *, emit: EventSink | None = None, commands: CommandChannel | None = None,
              resume: bool = False, overrides: Sequence[str] = (), max_steps: int | None = None,
              on_ready: Callable[[RunRecord], None] | None = None) -> Path | None:
    """Train the project as a service until it ends; returns the LoRA path (None when aborted).

    Raises what ``run_training`` raises (after its Failed event); errors found before training
    (config, lock, socket) are raised before ``on_ready`` is called.
    """
    from loratui.engine.runner import check_writable, file_logging, prepare_config, run_training

    project = Path(project_dir).expanduser().resolve()
    commands = commands or CommandChannel()
    if _process_rank() != 0:
        # Several processes are one run: the first owns the socket, the record and the notification.
        return run_training(project, emit=emit or (lambda event: None), commands=commands, resume=resume,
                            overrides=overrides, max_steps=max_steps)
    cfg = prepare_config(project, overrides)
    check_writable(ProjectPaths(project))
    service = RunService(project, commands, notify.NotifySettings.from_config(cfg))
    # Before the log file: a second starter must not write into the live run's train.log.
    service.take_lock()
    handler = file_logging(ProjectPaths(project).log_file)  # also the socket's and the notification's lines
    lora: Path | None = None
    try:
        service.open()
        if on_ready is not None and service.record is not None:
            on_ready(service.record)
        fan = EventFanout(service.on_event)
        if emit is not None:
            fan.add(emit)
        if service.lock.fallback_note:
            log.warning("%s", service.lock.fallback_note)
            fan(Status(text=service.lock.fallback_note, level="warning"))
        try:
            lora = run_training(project, emit=fan, commands=commands, resume=resume, overrides=overrides,
                                max_steps=max_steps)
        except Exception as exc:
            service.notify_end("failed", message=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        service.notify_end(service.tracker.state)
        return lora
    finally:
        service.close()
        if handler is not None:
            logging.getLogger("loratui").removeHandler(handler)
            handler.close()


def _process_rank() -> int:
    """This process's rank when launched by accelerate or torchrun (0 when alone)."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


# The process that --detach and the dashboard start -------------------------------------------


def _signals_to_commands(commands: CommandChannel) -> None:
    def stop(signum: int, frame: object) -> None:
        commands.send(Command.STOP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the terminal that started us may close


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loratui.run.service",
                                 description="A detached training run (`loratui train DIR --detach` starts it).")
    ap.add_argument("project_dir", type=Path)
    ap.add_argument("--ready-fd", type=int, help="write one JSON line here once the socket is up (or why not)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args(argv)
    commands = CommandChannel()
    _signals_to_commands(commands)
    ready = os.fdopen(args.ready_fd, "w", encoding="utf-8") if args.ready_fd is not None else None

    def tell(data: dict[str, Any]) -> None:
        nonlocal ready
        if ready is not None:
            try:
                ready.write(json.dumps(data) + "\n")
                ready.close()
            except OSError:
                pass
            ready = None

    def on_ready(record: RunRecord) -> None:
        tell({"ready": True, "pid": record.pid, "socket": record.socket})

    processes = _processes_wanted(args.project_dir, args.overrides)
    if processes > 1:
        return _launch_ranks(args, processes, tell)
    try:
        serve_run(args.project_dir, commands=commands, resume=args.resume, overrides=args.overrides,
                  max_steps=args.max_steps, on_ready=on_ready)
    except UserError as exc:
        tell({"ready": False, "message": str(exc)})
        print(f"loratui: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - run_training has sent Failed and logged the traceback
        tell({"ready": False, "message": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


def _processes_wanted(project_dir: Path, overrides: Sequence[str]) -> int:
    """How many processes this run is to start (``train.num_processes``); 1 once started by a launcher."""
    from loratui.engine.distributed import launched_distributed

    if launched_distributed():
        return 1
    from loratui.engine.launch import processes_to_start
    from loratui.engine.runner import prepare_config

    try:
        return processes_to_start(prepare_config(Path(project_dir), overrides))
    except Exception:  # noqa: BLE001 - serve_run reports a bad config in its own words
        return 1


def _launch_ranks(args: argparse.Namespace, processes: int, tell: Callable[[dict[str, Any]], None]) -> int:
    """Start the ranks of a run with several processes and wait for them. Rank 0 is the service (its
    socket and record); this process only says when that socket is up, or why the ranks ended first."""
    from loratui.engine.launch import launch

    project = Path(args.project_dir).expanduser().resolve()
    rank_args = [str(project), *(["--resume"] if args.resume else []),
                 *(["--max-steps", str(args.max_steps)] if args.max_steps is not None else [])]
    for item in args.overrides:
        rank_args += ["--set", item]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            record = live_record(project)
            if record is not None and record.pid != os.getpid():
                tell({"ready": True, "pid": record.pid, "socket": record.socket})
                return

    threading.Thread(target=watch, name="loratui-ranks-ready", daemon=True).start()
    try:
        code = launch(processes, rank_args, echo=lambda line: print(line, flush=True), module="loratui.run.service")
    finally:
        done.set()
    tell({"ready": False, "message": f"the {processes} training processes ended (exit code {code}) before the "
                                     f"run was up; see {ProjectPaths(project).logs}"})
    return code


if __name__ == "__main__":
    sys.exit(main())
