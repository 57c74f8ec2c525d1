"""Start a run in a session of its own (``--detach``, and the dashboard's Train key)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from loratui.errors import UserError
from loratui.run.location import RunFiles

READY_TIMEOUT_S = 120.0
"""Reading the config and taking the socket takes a second; a very loaded machine may take longer."""


class RunDidNotStart(UserError):
    pass


def child_env() -> dict[str, str]:
    """This process's environment, with this very loratui importable (also from an uninstalled tree)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def start_run(project: Path, *, resume: bool = False, overrides: Sequence[str] = (),
              max_steps: int | None = None) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start ``python -m loratui.run.service`` detached; return once its socket is up.

    The process has its own session (no terminal's SIGHUP or Ctrl+C reaches it) and writes
    its stdout and stderr to ``logs/run-output.log``. Raises :class:`RunDidNotStart` with
    the run's own message when it cannot start (bad config, a run already live…).
    """
    project = Path(project).expanduser().resolve()
    files = RunFiles(project)
    files.output_log.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "loratui.run.service", str(project), "--ready-fd", str(write_fd)]
    if resume:
        argv.append("--resume")
    if max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    for item in overrides:
        argv += ["--set", item]
    try:
        with open(files.output_log, "ab") as output, open(os.devnull, "rb") as nothing:
            process = subprocess.Popen(argv, stdin=nothing, stdout=output, stderr=output, env=child_env(),
                                       pass_fds=(write_fd,), start_new_session=True, cwd=project)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        answer = _read_ready(read_fd, process)
    finally:
        os.close(read_fd)
    if not answer.get("ready"):
        message = answer.get("message") or f"the run ended at once; see {files.output_log}"
        raise RunDidNotStart(str(message))
    return process, answer


def _read_ready(fd: int, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.5)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
            if b"\n" in data:
                break
        elif process.poll() is not None:
            break
    try:
        return json.loads(data.split(b"\n", 1)[0])
    except (json.JSONDecodeError, IndexError):
        code = process.poll()
        why = "is still starting" if code is None else f"ended with exit code {code}"
        return {"ready": False, "message": f"the training process {why} without taking its socket"}
