"""A run that outlives its screen, with real processes: --detach, status, pause/resume, stop, notify."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from loratui.cli import main
from loratui.engine.checkpoint import latest_checkpoint, read_state
from loratui.project import ProjectPaths
from loratui.run.client import RunClient
from loratui.run.location import RunFiles
from loratui.run.record import RunRecord, pid_alive, write_record
from loratui.run.status import run_status

QUIET = ("--set", "sample.every_n_steps=0", "--set", "save.every_n_steps=0")


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LORATUI_STATE_DIR", str(tmp_path / "state"))
    yield
    # A test that failed half-way leaves its detached run training: end it, or it eats the CPU of
    # every test after it.
    import signal

    from loratui.run.record import read_record

    for record_file in tmp_path.rglob(".loratui/run.json"):
        record = read_record(record_file.parent.parent)
        if record is not None and record.pid != os.getpid() and pid_alive(record.pid):
            os.kill(record.pid, signal.SIGKILL)


def _append(project: Path, text: str) -> None:
    with (project / "loratui.toml").open("a", encoding="utf-8") as f:
        f.write(text)


def _wait(what: str, predicate, limit_s: float = 240.0, every_s: float = 0.5):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def _status_json(project: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["status", str(project), "--json"]) == 0
    [status] = json.loads(capsys.readouterr().out)
    return status


def _leave_a_killed_runs_remains(project: Path) -> None:
    """What kill -9 of a run leaves: a socket file nobody listens on and a record naming a dead pid."""
    files = RunFiles(project)
    files.folder.mkdir(mode=0o700)
    files.socket_path().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(files.socket_path()))
    stale.close()
    write_record(RunRecord(project=str(project.resolve()), pid=2**22 + 7, host=socket.gethostname(),
                           started_at=time.time() - 60, config_digest="", socket=str(files.socket_path()),
                           state="training", resume_command=f"loratui train {project} --detach --resume",
                           step=7, total_steps=100))


def test_detached_run_is_watched_paused_resumed_and_stopped_from_a_shell(sample_project: Path, capsys,
                                                                         record_property) -> None:
    _leave_a_killed_runs_remains(sample_project)
    dead = _status_json(sample_project, capsys)
    assert dead["state"] == "dead" and "--resume" in dead["resume_command"]
    marker = sample_project / "notified.txt"
    _append(sample_project, f'\n[notify]\ncommand = "echo $LORATUI_STATUS > {marker}"\ncountdown_s = 120\n')

    t0 = time.monotonic()
    assert main(["train", str(sample_project), "--detach", "--max-steps", "5000", *QUIET]) == 0
    detach_s = time.monotonic() - t0
    out = capsys.readouterr().out
    assert f"loratui attach {sample_project}" in out
    assert main(["train", str(sample_project), "--detach", *QUIET]) == 2
    assert "already training" in capsys.readouterr().err

    first = _wait("steps", lambda: (s := _status_json(sample_project, capsys))["step"] >= 2 and s)
    assert first["state"] == "training" and first["total_steps"] == 5000
    assert {"project", "state", "step", "total_steps", "loss", "eta_s"} <= set(first)
    assert isinstance(first["loss"], float) and first["eta_s"] > 0
    files = RunFiles(sample_project)
    assert oct(files.folder.stat().st_mode & 0o777) == "0o700"
    assert oct(files.socket_path().stat().st_mode & 0o777) == "0o600"

    # Garbage, an oversized line and a client that never reads: the run goes on regardless.
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lazy.connect(str(files.socket_path()))
    rude = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rude.connect(str(files.socket_path()))
    rude.sendall(b"\xff\x00nonsense\n" + b"z" * 100_000 + b"\n{\"command\": \"launch\"}\nsto")
    rude.close()

    assert main(["pause", str(sample_project)]) == 0
    paused = _wait("paused", lambda: (s := _status_json(sample_project, capsys))["state"] == "paused" and s)
    time.sleep(2)
    assert _status_json(sample_project, capsys)["step"] == paused["step"]  # the counter holds
    assert main(["resume", str(sample_project)]) == 0
    _wait("steps after resuming", lambda: _status_json(sample_project, capsys)["step"] > paused["step"])

    # A dashboard-like client sees the countdown of notify.command and cancels it.
    watcher = RunClient.connect(sample_project)
    capsys.readouterr()
    assert main(["stop", str(sample_project)]) == 0
    seen: list[dict] = []

    def until_pending() -> bool:
        obj = watcher.read(1.0)
        if obj is not None:
            seen.append(obj)
        return any(o.get("event") == "notify_pending" for o in seen)

    _wait("the notify countdown", until_pending)
    finished = [o for o in seen if o.get("event") == "finished"]
    assert finished and finished[0]["outcome"] == "stopped"
    assert watcher.request("cancel_notify")["reply"] == "ok"
    _wait("the cancellation", lambda: (o := watcher.read(1.0)) is not None and o.get("event") == "notify_done"
          and o["cancelled"])
    watcher.close()
    lazy.close()

    pid = json.loads(files.record.read_text())["pid"]
    _wait("the run process to exit", lambda: not pid_alive(pid), limit_s=60)
    final = _status_json(sample_project, capsys)
    assert final["state"] == "stopped"
    ckpt = latest_checkpoint(ProjectPaths(sample_project).checkpoints)
    assert ckpt is not None and read_state(ckpt).step == final["step"] == finished[0]["step"]
    assert Path(final["lora_path"]).exists()
    assert not marker.exists()  # cancelled: the command never ran
    assert not files.socket_path().exists()
    assert main(["status"]) == 0 and "stopped" in capsys.readouterr().out  # found through the registry
    record_property("summary", f"--detach returned in {detach_s:.1f} s; status --json showed steps; pause held the "
                               f"step counter; stop saved step {final['step']}; stale socket and garbage ignored; "
                               "notify countdown cancelled by a client")


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_notify_command_and_webhook_run_after_the_final_files_exist(sample_project: Path, record_property) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = sample_project / "notified.txt"
    lora = ProjectPaths(sample_project).output / "zxc_toy.safetensors"
    # The command records whether the LoRA and the final checkpoint were already there when it ran.
    command = (f'test -s "$LORATUI_LORA" && ls checkpoints | grep -q step-000003 && '
               f'echo "$LORATUI_STATUS $LORATUI_STEP $LORATUI_LORA" > {out}')
    _append(sample_project, f"\n[notify]\ncommand = '{command}'\n"
                            f'webhook = "http://127.0.0.1:{server.server_port}/done"\ncountdown_s = 0\n')
    try:
        assert main(["train", str(sample_project), "--headless", "--max-steps", "3", *QUIET]) == 0
    finally:
        server.shutdown()
    assert out.read_text().split() == ["finished", "3", str(lora)]
    [hook] = _Hook.received
    assert hook["status"] == "finished" and hook["step"] == 3 and hook["lora_path"] == str(lora)
    assert hook["project"] == str(sample_project.resolve())
    record_property("summary", "notify.command ran after the LoRA and final checkpoint existed; the webhook on "
                               "127.0.0.1 received the same as JSON")


def test_an_unreachable_webhook_and_a_failing_command_are_not_fatal(sample_project: Path) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    _append(sample_project, f'\n[notify]\ncommand = "exit 3"\nwebhook = "http://127.0.0.1:{port}/"\n'
                            "countdown_s = 0\n")
    assert main(["train", str(sample_project), "--headless", "--max-steps", "1", *QUIET]) == 0
    log = ProjectPaths(sample_project).log_file.read_text()
    assert "notify.command exited with 3" in log and "notify.webhook unreachable" in log
