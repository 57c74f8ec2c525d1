"""One training per project, held by the kernel: stale pids, zombies, a race at one instant, kill -9 then resume."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratui.config import apply_override, load_config, save_config
from loratui.engine.checkpoint import latest_checkpoint, load_checkpoint
from loratui.project import ProjectLocked, ProjectPaths, RunLock
from loratui.run import lock as run_lock
from loratui.run.lock import probe_lock, read_owner
from loratui.run.record import RunRecord
from loratui.run.tracker import read_metric_rows

REPO = Path(__file__).resolve().parent.parent

HOLDER = """
import sys, time
from loratui.run.lock import RunLock
lock = RunLock(sys.argv[1])
start_at = float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
try:
    lock.acquire()
except Exception as exc:
    print("refused:", exc, flush=True)
    sys.exit(2)
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
            "PYTHONUNBUFFERED": "1"}


def _holder(path: Path, *, hold_s: float = 60.0, start_at: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(start_at), str(hold_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_held(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "held", line + proc.stdout.read()


def test_a_lock_file_naming_a_live_unrelated_process_does_not_block(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        # As a pid file of an older loratui left it, and as this one writes it: the pid lives, on this host.
        for text in (str(sleeper.pid), json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                   "started_at": time.time(), "command": "loratui train x"})):
            paths.lock.write_text(text)
            assert probe_lock(paths.lock).held is False
            with RunLock(paths):
                owner = read_owner(paths.lock)
                assert owner is not None and owner.pid == os.getpid() and owner.host == socket.gethostname()
            assert not paths.lock.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_held_lock_refuses_with_who_holds_it_and_a_killed_holder_that_stays_a_zombie_does_not(
        tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path)
    holder = _holder(paths.lock)
    try:
        _wait_held(holder)
        probe = probe_lock(paths.lock)
        assert probe.held is True and probe.owner is not None and probe.owner.pid == holder.pid
        with pytest.raises(ProjectLocked) as refused:
            RunLock(paths).acquire()
        message = str(refused.value)
        assert "already training" in message and f"process {holder.pid}" in message
        assert f"loratui attach {tmp_path}" in message
        # Killed and never reaped (a container whose PID 1 does not reap): a zombie whose pid kill(pid, 0) finds.
        holder.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _state(holder.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(holder.pid, 0)
        assert read_owner(paths.lock).pid == holder.pid  # the file still names it: information only
        assert probe_lock(paths.lock).held is False
        record = RunRecord(project=str(tmp_path), pid=holder.pid, host=socket.gethostname(), started_at=0.0,
                           config_digest="", socket="")
        assert not record.process_alive()  # status and attach call it dead
        with RunLock(paths):
            assert read_owner(paths.lock).pid == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_the_run_service_and_the_engine_inside_it_share_one_hold(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path)
    outer, inner = RunLock(paths), RunLock(paths)
    outer.acquire()
    inner.acquire()  # the same process: counted, not refused
    inner.release()
    assert paths.lock.exists() and probe_lock(paths.lock).held
    outer.release()
    assert not paths.lock.exists() and probe_lock(paths.lock).held is False


def test_six_starters_at_the_same_instant_exactly_one_takes_the_project(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path)
    start_at = time.time() + 2.0  # every interpreter up and waiting before then
    starters = [_holder(paths.lock, hold_s=4.0, start_at=start_at) for _ in range(6)]
    outputs = []
    for proc in starters:
        out, _ = proc.communicate(timeout=60)
        outputs.append((proc.returncode, out))
    winners = [out for code, out in outputs if code == 0]
    losers = [out for code, out in outputs if code == 2]
    assert len(winners) == 1 and len(losers) == 5, outputs
    assert all("already training" in out for out in losers), losers
    assert probe_lock(paths.lock).held is False  # the winner exited without releasing: the kernel let it go


def _headless(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "loratui", "train", str(project), "--headless", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())


def _quiet(project: Path, *assignments: str) -> None:
    cfg = load_config(project)
    for item in ("sample.every_n_steps=0", *assignments):
        apply_override(cfg, item)
    save_config(project, cfg)


def test_two_trainings_started_at_once_on_one_project_one_trains_the_other_says_so(sample_project: Path) -> None:
    _quiet(sample_project, "save.every_n_steps=0")
    # Long enough that the winner still trains when the other, started with it, reaches the lock.
    first, second = _headless(sample_project, "--max-steps", "16"), _headless(sample_project, "--max-steps", "16")
    results = [(p.returncode, out) for p, out in ((p, p.communicate(timeout=300)[0]) for p in (first, second))]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(out for code, out in results if code == 2)
    assert "already training" in refused and f"loratui attach {sample_project.resolve()}" in refused, refused
    rows = read_metric_rows(ProjectPaths(sample_project).metrics)
    assert [r["step"] for r in rows] == list(range(1, 17))  # one run's steps, not two interleaved


def test_sigkill_at_random_moments_then_resume_always_resumes(sample_project: Path, record_property) -> None:
    """kill -9 during the imports, just after the lock is taken and in the middle of training (checkpoints
    are written every step), the dead left as unreaped zombies; every next --resume starts, and the last
    one finishes from the newest checkpoint."""
    _quiet(sample_project, "save.every_n_steps=1", "save.keep=2")
    paths = ProjectPaths(sample_project)
    seed = int(time.time())
    rng = random.Random(seed)
    zombies: list[subprocess.Popen] = []
    moments = []

    def newest_step() -> int:
        newest = latest_checkpoint(paths.checkpoints)
        return load_checkpoint(newest).state.step if newest is not None else 0

    def wait_for(what: str, proc: subprocess.Popen, done) -> None:
        deadline = time.monotonic() + 180
        while not done():
            assert proc.poll() is None, f"seed {seed}, waiting for {what}:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, f"seed {seed}: timed out waiting for {what}"
            time.sleep(0.05)

    try:
        for attempt, when in enumerate(("training", "start", "lock", "training")):
            before = newest_step()
            proc = _headless(sample_project, *(["--resume"] if attempt else []), "--max-steps", "400")
            if when == "start":
                delay = rng.uniform(0.1, 2.5)  # during the imports, often before the lock
            elif when == "lock":
                wait_for("the lock", proc, lambda: probe_lock(paths.lock).held)
                delay = rng.uniform(0.0, 2.0)  # loading the model
            else:
                wait_for("a new checkpoint", proc, lambda: newest_step() > before)
                delay = rng.uniform(0.0, 1.5)  # between steps, or while a checkpoint is written
            time.sleep(delay)
            moments.append(f"{delay:.1f} s after {when}")
            assert proc.poll() is None, f"seed {seed}, attempt {attempt}: it ended by itself:\n{proc.stdout.read()}"
            proc.send_signal(signal.SIGKILL)
            zombies.append(proc)  # not reaped: its pid stays, as a zombie, while the next one starts
        newest = latest_checkpoint(paths.checkpoints)
        start = newest_step()
        final = _headless(sample_project, "--resume", "--max-steps", str(start + 2))
        out, _ = final.communicate(timeout=300)
    finally:
        for proc in zombies:
            proc.kill()
            proc.wait()
    assert final.returncode == 0, f"seed {seed}, kills at {moments}:\n{out}"
    assert "already training" not in out
    assert start > 0 and newest is not None and f"resumed from {newest.name}" in out, out
    steps = [r["step"] for r in read_metric_rows(paths.metrics)]
    assert steps == list(range(1, start + 3)), f"seed {seed}: {steps}"
    assert (paths.output / "zxc_toy.safetensors").is_file()
    record_property("summary", f"SIGKILL at {', '.join(moments)} (seed {seed}), each dead run left as a zombie: "
                               f"--resume started every time and finished from step {start}")


@pytest.fixture
def no_flock(monkeypatch):
    """A network filesystem whose flock answers ENOLCK."""
    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", refuse)


def test_without_flock_a_run_says_so_once_and_the_pid_and_host_decide(tmp_path: Path, no_flock,
                                                                      monkeypatch) -> None:
    from loratui.engine import runner
    from loratui.events import Status
    from loratui.project import create_project
    from loratui.run.service import serve_run

    monkeypatch.setenv("LORATUI_STATE_DIR", str(tmp_path / "state"))
    project = tmp_path / "proj"
    create_project(project)
    paths = ProjectPaths(project)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths.lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))

    def engine(project_dir: Path, **_: object) -> None:
        with RunLock(ProjectPaths(project_dir)):  # the engine takes it again inside the service
            assert read_owner(paths.lock).pid == os.getpid()  # the dead run's file was taken over

    monkeypatch.setattr(runner, "run_training", engine)
    events: list = []
    serve_run(project, emit=events.append)
    said = [e.text for e in events if isinstance(e, Status) and "does not support file locks" in e.text]
    assert len(said) == 1 and said[0].startswith(f"the filesystem of {project.resolve()}")
    assert paths.log_file.read_text().count("does not support file locks") == 1
    assert not paths.lock.exists()

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        paths.lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(ProjectLocked, match=f"process {sleeper.pid}.*delete"):
            RunLock(paths).acquire()
        assert probe_lock(paths.lock).held is None  # cannot tell: status falls back to the pid
        record = RunRecord(project=str(project), pid=sleeper.pid, host=socket.gethostname(), started_at=0.0,
                           config_digest="", socket="")
        assert record.process_alive()
    finally:
        sleeper.kill()
        sleeper.wait()
    paths.lock.write_text(json.dumps({"pid": 1, "host": "gpu-box-7"}))
    with pytest.raises(ProjectLocked, match="on gpu-box-7"):
        RunLock(paths).acquire()


def test_where_flock_is_posix_locks_underneath_asking_about_our_own_run_keeps_its_lock(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """NFS emulates flock with POSIX locks, which a process loses when it closes any descriptor of the
    file: the run's own status answers and messages must not open it again."""
    import fcntl

    monkeypatch.setattr(run_lock.fcntl, "flock", fcntl.lockf)
    paths = ProjectPaths(tmp_path)
    other = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(3)\n")
    with RunLock(paths):
        record = RunRecord(project=str(tmp_path), pid=os.getpid(), host=socket.gethostname(), started_at=0.0,
                           config_digest="", socket="")
        for _ in range(3):
            assert probe_lock(paths.lock).held and record.process_alive()
            assert read_owner(paths.lock).pid == os.getpid()
        assert subprocess.run([sys.executable, "-c", other, str(paths.lock)]).returncode == 3  # still ours


def test_a_run_on_another_machine_sharing_the_folder_is_not_called_dead(tmp_path: Path, monkeypatch) -> None:
    from loratui.run.client import NoLiveRun, RunClient
    from loratui.run.record import write_record
    from loratui.run.status import format_line, run_status

    monkeypatch.setenv("LORATUI_STATE_DIR", str(tmp_path / "state"))
    project = tmp_path / "proj"
    project.mkdir()
    holder = _holder(ProjectPaths(project).lock)
    try:
        _wait_held(holder)
        write_record(RunRecord(project=str(project.resolve()), pid=holder.pid, host=socket.gethostname(),
                               started_at=time.time(), config_digest="", socket=str(project / "x.sock"),
                               state="training", step=12, total_steps=100))
        first_machine = socket.gethostname()
        monkeypatch.setattr(socket, "gethostname", lambda: "gpu-b")  # we look from the second machine
        status = run_status(project)
        assert status["state"] == "training" and status["step"] == 12
        assert f"runs on {first_machine}" in format_line(status)
        with pytest.raises(NoLiveRun, match="attach from"):
            RunClient.connect(project)
    finally:
        holder.kill()
        holder.wait()
    status = run_status(project)
    assert status["state"] == "dead"  # its process ended: the lock is free, on any machine

