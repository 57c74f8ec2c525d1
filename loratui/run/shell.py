"""The run commands of a plain shell: ``train --detach``, ``status``, ``stop``, ``pause``, ``resume``, ``logs``."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from loratui.events import event_from_dict
from loratui.loss_smoothing import LossSmoother
from loratui.project import ProjectPaths
from loratui.run.client import NoLiveRun, RunClient
from loratui.run.record import registered_projects
from loratui.run.status import format_line, run_status

STEP_LINE_EVERY_S = 5.0
"""``logs -f`` prints a step line at most this often: readable on a phone, still live."""


def cmd_detach(args: argparse.Namespace) -> int:
    from loratui.run.launch import start_run

    project = Path(args.dir).expanduser().resolve()
    process, answer = start_run(project, resume=args.resume, overrides=args.overrides, max_steps=args.max_steps)
    print(f"training {project.name} in the background (process {process.pid}); it goes on when you log out.")
    print(f"  watch and steer:  loratui attach {project}")
    print(f"  from a shell:     loratui status {project}   loratui logs {project} -f   loratui stop {project}")
    print(f"  its output:       {ProjectPaths(project).logs / 'run-output.log'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    projects = [Path(d).expanduser().resolve() for d in args.dirs] or registered_projects()
    statuses = [run_status(p) for p in projects]
    if args.json:
        print(json.dumps(statuses))
        return 0
    if not statuses:
        print("no runs of this user on this machine (start one with `loratui train DIR --detach`).")
        return 0
    for status in statuses:
        print(format_line(status))
    return 0


def _send(project: Path, command: str, done: str) -> int:
    with RunClient.connect(project) as client:
        answer = client.request(command)
    if answer.get("reply") != "ok":
        print(f"loratui: {project.name}: {answer.get('message', answer)}", file=sys.stderr)
        return 1
    print(done)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    project = Path(args.dir).expanduser().resolve()
    code = _send(project, "stop", f"stopping {project.name} after the step in progress; a checkpoint and the "
                                  "LoRA are saved.")
    if code or not args.wait:
        return code
    while run_status(project)["state"] in ("training", "paused", "stopping", "starting"):
        time.sleep(1)
    print(format_line(run_status(project)))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    project = Path(args.dir).expanduser().resolve()
    return _send(project, "pause", f"pausing {project.name} after the step in progress (the model stays loaded).")


def cmd_resume(args: argparse.Namespace) -> int:
    project = Path(args.dir).expanduser().resolve()
    return _send(project, "resume", f"resuming {project.name}.")


def cmd_logs(args: argparse.Namespace) -> int:
    project = Path(args.dir).expanduser().resolve()
    try:
        client = RunClient.connect(project)
    except NoLiveRun as exc:
        # Not running: what it logged is the story.
        log = ProjectPaths(project).log_file
        if log.exists():
            sys.stdout.write("".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-40:]))
        print(format_line(run_status(project)))
        return 0 if not args.follow else (print(f"loratui: {exc}", file=sys.stderr) or 1)
    with client:
        printer = LinePrinter(sys.stdout, every_s=STEP_LINE_EVERY_S)
        while True:
            obj = client.read(0.5 if args.follow else 0.3)
            if obj is None:
                if client.closed or not args.follow:
                    break
                continue
            if "event" in obj:
                printer.show(obj)
    return 0


class LinePrinter:
    """Events as short lines; steps at most every ``every_s`` (and always the last of a run)."""

    def __init__(self, out: TextIO, every_s: float) -> None:
        self.out = out
        self.every_s = every_s
        self.smoother = LossSmoother()
        self._last_step_line = -math.inf

    def show(self, obj: dict[str, Any]) -> None:
        try:
            event = event_from_dict(obj)
        except (KeyError, TypeError):
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(getattr(event, "time", time.time())))
        kind = obj["event"]
        if kind == "step":
            smoothed = self.smoother.update(obj["loss"])
            when = float(obj.get("time", 0.0))  # the run's clock: a replayed backlog thins out the same way
            if when - self._last_step_line < self.every_s and obj["step"] != obj["total_steps"]:
                return
            self._last_step_line = when
            speed = 1 / obj["step_time_s"] if obj.get("step_time_s") else 0.0
            eta = (obj["total_steps"] - obj["step"]) / speed if speed else math.nan
            text = (f"step {obj['step']}/{obj['total_steps']}  loss {obj['loss']:.4f} (smoothed {smoothed:.4f})  "
                    f"{speed:.2f} it/s  eta {_short(eta)}")
        elif kind == "started":
            text = f"started at step {obj['start_step']}/{obj['total_steps']} on {obj['device']}"
        elif kind == "status":
            if obj.get("progress") is not None and obj["progress"] < 1:
                return
            text = obj["text"]
        elif kind == "checkpoint":
            text = f"checkpoint at step {obj['step']}: {obj['path']}"
        elif kind == "sample":
            text = f"sample at step {obj['step']}: {obj['path']}"
        elif kind in ("paused", "resumed"):
            text = f"{kind} at step {obj['step']}"
        elif kind == "finished":
            text = f"{obj.get('outcome', 'finished')} at step {obj['step']}; LoRA: {obj.get('lora_path') or 'not saved'}"
        elif kind == "failed":
            text = f"FAILED: {obj['message']}"
        elif kind == "notify_pending":
            text = f"in {obj['seconds']:.0f} s: {obj['what']}"
        elif kind == "notify_done":
            text = f"notification: {obj['detail']}"
        else:
            return
        self.out.write(f"{stamp} {text}\n")
        self.out.flush()


def _short(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
