"""Two real processes (torchrun, gloo on the CPU) training one run, as on a machine with two GPUs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loratui.cli import main
from loratui.project import ProjectPaths

REPO = Path(__file__).resolve().parent.parent
# Small and quick: the point is the processes, not the model. fp32 files so equality can be tight.
FAST = ["data.resolution=64", "sample.every_n_steps=0", "save.precision=fp32", "lora.rank=4", "lora.alpha=4"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc to find the ranks")


def _sets(*assignments: str) -> list[str]:
    out = []
    for a in (*FAST, *assignments):
        out += ["--set", a]
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    return env


def _torchrun(*args: str) -> list[str]:
    # --standalone picks a free port, so two of these can run side by side.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _run_two(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_torchrun("-m", "loratui", "train", str(project), "--headless", *args), env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _metrics(project: Path) -> list[dict]:
    path = ProjectPaths(project).metrics
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_processes_train_to_the_end_like_one_process_with_double_accumulation(sample_project: Path,
                                                                                 tmp_path: Path, capfd) -> None:
    # train.num_processes = 2 makes `loratui train --headless` start the processes itself (torchrun on the
    # CPU, accelerate launch on GPUs).
    code = main(["train", str(sample_project), "--headless", "--max-steps", "5",
                 *_sets("train.num_processes=2", "save.every_n_steps=2")])
    out = capfd.readouterr().out
    assert code == 0, out[-3000:]
    assert "starting 2 processes (CPU, gloo)" in out
    paths = ProjectPaths(sample_project)
    assert [p.name for p in paths.output.iterdir()] == ["zxc_toy.safetensors"]
    assert [p.name for p in sorted(paths.checkpoints.iterdir())] == ["step-000004", "step-000005"]  # keep = 2
    assert not paths.lock.exists()
    rows = _metrics(sample_project)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    # The sample project's epoch is 20 images (its close-ups repeat), 10 micro-batches of 2; two
    # processes take 2 of them a step, so the epoch counter turns at step 5, not step 10.
    assert [r["epoch"] for r in rows] == [0, 0, 0, 0, 1]
    assert out.count("done: ") == 1 and out.count("training 16 images") == 1, out  # rank 1 stays quiet
    assert "2 processes: each optimizer step takes batch 2 × accumulation 1 × 2 processes = 4 images" in out

    # Each rank encoded half of the images and read the other half from the cache.
    for log in (paths.log_file, paths.logs / "train-rank1.log"):
        assert "latents: 8 from cache, 8 encoded" in log.read_text(), log
    one = tmp_path / "one"
    shutil.copytree(sample_project, one, ignore=shutil.ignore_patterns("output", "checkpoints", "logs"))
    code = main(["train", str(one), "--headless", "--max-steps", "5", *_sets("train.grad_accum=2",
                                                                            "save.every_n_steps=2")])
    assert code == 0
    assert "latents: 16 from cache, 0 encoded" in capfd.readouterr().out  # the shared cache is complete
    two_procs = load_file(str(paths.output / "zxc_toy.safetensors"))
    one_proc = load_file(str(ProjectPaths(one).output / "zxc_toy.safetensors"))
    assert two_procs.keys() == one_proc.keys()
    worst = max((two_procs[k] - one_proc[k]).abs().max().item() for k in two_procs)
    assert worst < 2e-5, f"largest difference {worst}"
    changed = max((one_proc[k]).abs().max().item() for k in one_proc if "lora_up" in k)
    assert changed > 1e-3  # the LoRA trained: equality is not two untouched zero tensors
    # The reported loss is the mean over both ranks' micro-batches, as one process reports it.
    assert [r["loss"] for r in _metrics(one)] == pytest.approx([r["loss"] for r in rows], rel=1e-5)
    assert [r["epoch"] for r in _metrics(one)] == [r["epoch"] for r in rows]


def _steps(project: Path, rank: int) -> list[dict]:
    path = ProjectPaths(project).logs / f"steps-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pause_resume_and_stop_reach_both_ranks(sample_project: Path) -> None:
    # Paused longer than PAUSE_KEEPALIVE_S, so rank 1 waits through "still paused" broadcasts.
    script = json.dumps({"pause_after": 2, "pause_s": 7.0, "stop_after": 3})
    done = subprocess.run(_torchrun(str(REPO / "tests" / "multiprocess_worker.py"), str(sample_project), script,
                                    *_sets("train.max_steps=8", "save.every_n_steps=0")),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = [json.loads(line) for line in (ProjectPaths(sample_project).logs / "events-rank0.jsonl")
              .read_text().splitlines()]
    paused = next(e for e in events if e["type"] == "Paused")
    resumed = next(e for e in events if e["type"] == "Resumed")
    assert paused["step"] == resumed["step"] == 2 and resumed["t"] - paused["t"] >= 6.5
    for rank in (0, 1):
        steps = _steps(sample_project, rank)
        # The step counter held on both ranks while paused, and both stopped after step 3.
        assert [s["step"] for s in steps] == [1, 2, 3], (rank, steps)
        assert not [s for s in steps if paused["t"] < s["t"] < resumed["t"]], (rank, steps)
    finished = next(e for e in events if e["type"] == "Finished")
    assert finished["step"] == 3
    assert [p.name for p in ProjectPaths(sample_project).checkpoints.iterdir()] == ["step-000003"]
    # Rank 1 reports nothing but failures.
    assert not (ProjectPaths(sample_project).logs / "events-rank1.jsonl").exists()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _rank_of(pid: int) -> int | None:
    """The RANK a launcher gave this process, or None."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _rank_pid(launcher: int, rank: int) -> int | None:
    return next((pid for pid in _children(launcher) if _rank_of(pid) == rank), None)


def test_a_killed_rank_stops_the_other_and_one_process_resumes(sample_project: Path, capsys) -> None:
    args = ["--max-steps", "6", *_sets("save.every_n_steps=2")]
    launcher = subprocess.Popen(_torchrun("-m", "loratui", "train", str(sample_project), "--headless", *args),
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 400
        while len(_metrics(sample_project)) < 3:
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()[-3000:]
            time.sleep(0.2)
        victim = _rank_pid(launcher.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        out, _ = launcher.communicate(timeout=120)
        took = time.monotonic() - killed_at
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert took < 60, f"the other rank took {took:.0f} s to stop"
    assert launcher.returncode != 0
    assert "rank 1" in out and "is gone" in out and "--resume" in out, out[-3000:]
    paths = ProjectPaths(sample_project)
    assert not paths.lock.exists() or not _alive_lock(paths)
    assert "step-000002" in [p.name for p in paths.checkpoints.iterdir()]

    code = main(["train", str(sample_project), "--headless", "--resume", *args])
    assert code == 0
    out = capsys.readouterr().out
    assert "processes: 2 → 1" in out, out
    assert [r["step"] for r in _metrics(sample_project)] == [1, 2, 3, 4, 5, 6]
    assert (paths.output / "zxc_toy.safetensors").is_file()


def _alive_lock(paths: ProjectPaths) -> bool:
    from loratui.run.lock import probe_lock

    return bool(probe_lock(paths.lock).held)


def test_resume_check_names_a_change_in_the_number_of_processes() -> None:
    from loratui.config import ProjectConfig
    from loratui.engine.compat import config_digest, describe_differences

    cfg = ProjectConfig()
    cfg.train.batch_size = 2
    breaking, harmless = describe_differences(config_digest(cfg, "x", processes=4), config_digest(cfg, "x"))
    assert not breaking
    assert harmless == ["processes: 4 → 1 (each optimizer step now takes 2 images instead of 8)"]
    old_checkpoint = config_digest(cfg, "x")
    del old_checkpoint["processes"]
    assert describe_differences(old_checkpoint, config_digest(cfg, "x")) == ([], [])


def test_a_frozen_rank_is_noticed_by_its_silence(sample_project: Path) -> None:
    """SIGSTOP leaves the process alive and its sockets open, as a hung GPU or lost machine would: no
    collective fails, so only the heartbeat can tell. Rank 0 must leave with a message, not wait."""
    from loratui.engine.distributed import EXIT_PEER_LOST, PEER_SILENT_S

    launcher = subprocess.Popen(_torchrun("-m", "loratui", "train", str(sample_project), "--headless",
                                          "--max-steps", "50", *_sets("save.every_n_steps=2")),
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    frozen = None
    try:
        deadline = time.monotonic() + 400
        while len(_metrics(sample_project)) < 2:
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()[-3000:]
            time.sleep(0.2)
        rank0, frozen = _rank_pid(launcher.pid, 0), _rank_pid(launcher.pid, 1)
        assert rank0 is not None and frozen is not None
        os.kill(frozen, signal.SIGSTOP)
        frozen_at = time.monotonic()
        while _alive(rank0) and time.monotonic() - frozen_at < 90:
            time.sleep(0.2)
        took = time.monotonic() - frozen_at
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGKILL)
        out, _ = launcher.communicate(timeout=120)
    assert took < 60, f"rank 0 took {took:.0f} s to leave"
    assert took > PEER_SILENT_S - 1  # it waited for the silence, not a failed collective
    assert f"rank 1 (process {frozen} on " in out and "has not answered" in out, out[-3000:]
    assert f"exitcode  : {EXIT_PEER_LOST}" in out  # torchrun's summary of rank 0
    assert not _alive_lock(ProjectPaths(sample_project))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_the_dashboard_starts_two_processes_and_steers_them(sample_project: Path) -> None:
    """The dashboard's path: its training process starts the ranks itself and relays rank 0's events;
    pause, resume and stop sent to it reach both ranks."""
    from loratui.commands import Command, CommandChannel
    from loratui.engine.child import run_in_child
    from loratui.events import Event, Finished, Paused, Resumed, Status, StepDone

    commands = CommandChannel()
    seen: list[Event] = []

    def emit(event: Event) -> None:
        seen.append(event)
        if isinstance(event, StepDone) and event.step == 1:
            commands.send(Command.PAUSE)
        elif isinstance(event, Paused):
            commands.send(Command.RESUME)
        elif isinstance(event, Resumed):
            commands.send(Command.STOP)

    run_in_child(sample_project, emit=emit, commands=commands, max_steps=50,
                 overrides=[*FAST, "train.num_processes=2", "save.every_n_steps=0"])
    assert any(isinstance(e, Status) and e.text.startswith("2 processes:") for e in seen)
    steps = [e.step for e in seen if isinstance(e, StepDone)]
    pause = [e.step for e in seen if isinstance(e, (Paused, Resumed))]
    # Commands travel through pipes while the run goes on, so they land a step or two later.
    assert len(pause) == 2 and pause[0] == pause[1] and steps == list(range(1, len(steps) + 1)) and len(steps) < 6
    finished = [e for e in seen if isinstance(e, Finished)]
    assert len(finished) == 1 and finished[0].step == steps[-1] and finished[0].stopped_early
    assert [p.name for p in ProjectPaths(sample_project).checkpoints.iterdir()] == [f"step-{steps[-1]:06d}"]
    assert not list(ProjectPaths(sample_project).logs.glob(".events-*"))


def _service_processes(project: Path) -> list[int]:
    """Every process of this project's run: the service that launched, the launcher and both ranks."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"loratui.run.service" in b" ".join(cmdline) and str(project).encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_a_detached_run_of_two_processes_is_steered_from_a_shell(sample_project: Path, tmp_path: Path, capsys,
                                                                 monkeypatch) -> None:
    """--detach with train.num_processes = 2: the service starts both ranks, rank 0 serves the socket and
    the record, and status / pause / resume / stop from a plain shell reach the run."""
    from loratui.engine.checkpoint import latest_checkpoint, read_state
    from loratui.run.record import read_record

    monkeypatch.setenv("LORATUI_STATE_DIR", str(tmp_path / "state"))
    for name, value in _env().items():
        monkeypatch.setenv(name, value)

    def status() -> dict:
        capsys.readouterr()
        assert main(["status", str(sample_project), "--json"]) == 0
        [row] = json.loads(capsys.readouterr().out)
        return row

    def wait(what: str, predicate, limit_s: float = 300.0):
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}: {status()}")

    assert main(["train", str(sample_project), "--detach", "--max-steps", "5000",
                 *_sets("train.num_processes=2", "save.every_n_steps=0")]) == 0
    processes: list[int] = []
    try:
        wait("steps", lambda: status()["step"] >= 2)
        processes = _service_processes(sample_project.resolve())
        ranks = [pid for pid in processes if _rank_of(pid) is not None]
        assert sorted(_rank_of(pid) for pid in ranks) == [0, 1], processes
        assert read_record(sample_project).pid == next(pid for pid in ranks if _rank_of(pid) == 0)
        assert main(["pause", str(sample_project)]) == 0
        held = wait("paused", lambda: (s := status())["state"] == "paused" and s)
        time.sleep(3)
        assert status()["step"] == held["step"]  # the counter holds
        assert main(["resume", str(sample_project)]) == 0
        wait("steps after resuming", lambda: status()["step"] > held["step"])
        assert main(["stop", str(sample_project), "--wait"]) == 0
        wait("every process of the run to exit", lambda: not [pid for pid in processes if _alive(pid)], 120)
    finally:
        for pid in processes:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    final = status()
    assert final["state"] == "stopped"
    ckpt = latest_checkpoint(ProjectPaths(sample_project).checkpoints)
    assert ckpt is not None and read_state(ckpt).step == final["step"]
    assert Path(final["lora_path"]).exists()



@pytest.mark.parametrize("base", ["builtin:tiny-flux", "builtin:tiny-zimage", "builtin:tiny-qwen-image",
                                  "builtin:tiny-chroma", "builtin:tiny-flux2-klein"])
def test_two_processes_train_the_transformer_families(sample_project: Path, base: str) -> None:
    # Each rank's step sees the transformer wrapped in DistributedDataParallel: whatever a family reads from
    # the model's config (FLUX-dev's guidance embedding) must be read through the wrapper.
    result = _run_two(sample_project, "--max-steps", "2", *_sets(f"model.base={base}", "save.every_n_steps=0"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert [r["step"] for r in _metrics(sample_project)] == [1, 2]
    assert (ProjectPaths(sample_project).output / "zxc_toy.safetensors").is_file()
