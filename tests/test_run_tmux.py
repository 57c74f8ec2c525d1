"""Dashboards attached to a detached run in a real terminal (tmux, 80×24), as a user over SSH would."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratui.engine.checkpoint import latest_checkpoint, read_state
from loratui.project import ProjectPaths
from loratui.run.record import pid_alive
from loratui.run.status import run_status

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
REPO = Path(__file__).resolve().parent.parent
STEP = re.compile(r"Step\s+(\d+) / 5000")


class Tmux:
    def __init__(self, name: str) -> None:
        self.server = name  # a private tmux server, whatever the user runs

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.server, *args], check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def open(self, session: str, command: str) -> int:
        env = {k: os.environ[k] for k in ("PYTHONPATH", "LORATUI_CACHE_DIR", "LORATUI_CONFIG_DIR",
                                          "LORATUI_STATE_DIR", "OMP_NUM_THREADS", "HF_HUB_OFFLINE") if k in os.environ}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        env["TERM"] = "xterm-256color"
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        self.run("new-session", "-d", "-s", session, "-x", "80", "-y", "24", f"exec env {prefix} {command}")
        return int(self.run("display-message", "-p", "-t", session, "#{pane_pid}").strip())

    def has(self, session: str) -> bool:
        return subprocess.run(["tmux", "-L", self.server, "has-session", "-t", session], capture_output=True,
                              timeout=30).returncode == 0

    def screen(self, session: str) -> str:
        return self.run("capture-pane", "-p", "-t", session)

    def keys(self, session: str, *keys: str) -> None:
        self.run("send-keys", "-t", session, *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True, timeout=30)


def _wait(what: str, predicate, limit_s: float = 180.0, every_s: float = 0.5):
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def _step_on(tmux: Tmux, session: str) -> int | None:
    match = STEP.search(tmux.screen(session))
    return int(match.group(1)) if match else None


@pytest.fixture
def tmux(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LORATUI_STATE_DIR", str(tmp_path / "state"))
    t = Tmux(f"loratui-test-{os.getpid()}")
    yield t
    t.close()


def test_dashboards_attach_pause_detach_survive_kill_and_stop_a_detached_run(sample_project: Path, tmux: Tmux,
                                                                              record_property) -> None:
    project = sample_project.resolve()
    started = subprocess.run([sys.executable, "-m", "loratui", "train", str(project), "--detach", "--max-steps",
                              "5000", "--set", "sample.every_n_steps=0", "--set", "save.every_n_steps=0"],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert started.returncode == 0, started.stderr
    run_pid = json.loads((project / ".loratui" / "run.json").read_text())["pid"]
    _wait("the run's first steps", lambda: run_status(project)["step"] >= 1, limit_s=300)
    loratui = f"{shlex.quote(sys.executable)} -m loratui"

    # First dashboard: the counter moves, p pauses (counter holds, status says paused), p resumes, q detaches.
    tmux.open("a", f"{loratui} attach {shlex.quote(str(project))}")
    first = _wait("the step counter on screen", lambda: _step_on(tmux, "a"), limit_s=120)
    _wait("the counter to move", lambda: (_step_on(tmux, "a") or 0) > first, limit_s=120)
    tmux.keys("a", "p")
    _wait("paused", lambda: run_status(project)["state"] == "paused", limit_s=120)
    held = run_status(project)["step"]
    time.sleep(3)
    assert run_status(project)["step"] == held and _step_on(tmux, "a") == held
    assert "paused" in tmux.screen("a").lower()
    tmux.keys("a", "p")
    _wait("training again", lambda: run_status(project)["step"] > held, limit_s=120)
    tmux.keys("a", "q")
    _wait("the quit dialog", lambda: "Detach (keep training)" in tmux.screen("a"), limit_s=30)
    tmux.keys("a", "d")
    _wait("the first dashboard to leave", lambda: not tmux.has("a"), limit_s=30)
    after_detach = run_status(project)["step"]
    _wait("steps after detaching", lambda: run_status(project)["step"] > after_detach + 1, limit_s=120)

    # Second dashboard, killed with SIGKILL: the run does not notice.
    pid_b = tmux.open("b", f"{loratui} attach {shlex.quote(str(project))}")
    _wait("the second dashboard's counter", lambda: _step_on(tmux, "b"), limit_s=120)
    os.kill(pid_b, signal.SIGKILL)
    after_kill = run_status(project)["step"]
    _wait("steps after the kill", lambda: run_status(project)["step"] > after_kill + 1, limit_s=120)
    assert run_status(project)["state"] == "training"

    # Third dashboard (and a fourth watching): x stops the run with a checkpoint.
    tmux.open("c", f"{loratui} {shlex.quote(str(project))}")  # `loratui DIR` attaches to the live run
    tmux.open("d", f"{loratui} attach {shlex.quote(str(project))}")
    _wait("the third dashboard's counter", lambda: _step_on(tmux, "c"), limit_s=120)
    _wait("the fourth dashboard's counter", lambda: _step_on(tmux, "d"), limit_s=120)
    tmux.keys("c", "x")
    _wait("the stop dialog", lambda: "Stop and save" in tmux.screen("c"), limit_s=30)
    tmux.keys("c", "y")
    _wait("the run to end", lambda: not pid_alive(run_pid), limit_s=180)
    final = run_status(project)
    assert final["state"] == "stopped"
    ckpt = latest_checkpoint(ProjectPaths(project).checkpoints)
    assert ckpt is not None and read_state(ckpt).step == final["step"]
    _wait("the fourth dashboard to show the end", lambda: "stopped" in tmux.screen("d").lower()
          or "Stopped early" in tmux.screen("d"), limit_s=60)
    record_property("summary", f"tmux 80x24: dashboards attached to a --detach run; p paused it at step {held}; "
                               f"q→Detach and kill -9 of a dashboard left it training; x from a third stopped it at "
                               f"step {final['step']} with a checkpoint, a fourth saw the end")
