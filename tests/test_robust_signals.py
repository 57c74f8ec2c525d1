"""A run stopped from outside: Ctrl+C, SIGTERM, a dropped SSH session, kill -9 in the middle of a save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from loratui.config import apply_override, load_config, save_config
from loratui.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from loratui.project import ProjectPaths


def _set(project: Path, *assignments: str) -> None:
    cfg = load_config(project)
    for a in ["sample.every_n_steps=0", *assignments]:
        apply_override(cfg, a)
    save_config(project, cfg)


def _start(project: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "loratui", "train", str(project), "--headless", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for_steps(project: Path, proc: subprocess.Popen, n: int, timeout: float = 120) -> int:
    metrics = ProjectPaths(project).metrics
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early:\n{proc.stdout.read()}")
        if metrics.exists():
            done = len(metrics.read_text().splitlines())
            if done >= n:
                return done
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("training did not reach the wanted step in time")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_finish_the_step_save_and_say_how_to_resume(
        sample_project: Path, sig: int, code: int, record_property) -> None:
    _set(sample_project, "save.every_n_steps=0")
    proc = _start(sample_project, "--max-steps", "2000")
    _wait_for_steps(sample_project, proc, 2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    assert f"loratui train {sample_project} --headless --resume" in out
    rows = ProjectPaths(sample_project).metrics.read_text().splitlines()
    latest = latest_checkpoint(ProjectPaths(sample_project).checkpoints)
    assert latest is not None and load_checkpoint(latest).state.step == len(rows)
    record_property("summary", f"{signal.Signals(sig).name}: finished step {len(rows)}, saved it, exit {code}, "
                               "printed the resume command")


def test_a_second_ctrl_c_quits_at_once_without_damage(sample_project: Path, record_property) -> None:
    _set(sample_project, "save.every_n_steps=1")
    proc = _start(sample_project, "--max-steps", "2000")
    _wait_for_steps(sample_project, proc, 2)
    proc.send_signal(signal.SIGINT)
    # Two signals sent back to back can reach a busy process as one (pending signals do not queue);
    # the second goes once the first has been taken.
    for line in proc.stdout:
        if "Ctrl+C again" in line:
            break
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert time.monotonic() - start < 10
    for path in list_checkpoints(ProjectPaths(sample_project).checkpoints):
        load_checkpoint(path)  # every folder that looks complete is complete
    record_property("summary", "double Ctrl+C: quit at once; every checkpoint left behind loads")


def test_sighup_does_not_stop_a_headless_run(sample_project: Path, record_property) -> None:
    _set(sample_project, "save.every_n_steps=0")
    proc = _start(sample_project, "--max-steps", "2000")
    before = _wait_for_steps(sample_project, proc, 2)
    proc.send_signal(signal.SIGHUP)
    after = _wait_for_steps(sample_project, proc, before + 3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    record_property("summary", f"SIGHUP: ignored; training went on from step {before} to {after}+")


WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from loratui.engine.checkpoint import TrainState, write_checkpoint
    root = Path(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    lora = {f"m{i}.lora_down.weight": torch.randn(256, 1024, generator=g) for i in range(8)}
    opt = {"state": {i: {"exp_avg": torch.randn(256, 1024, generator=g),
                         "exp_avg_sq": torch.rand(256, 1024, generator=g)} for i in range(8)},
           "param_groups": [{"lr": 1e-4, "params": list(range(8))}]}
    def save(step):
        write_checkpoint(root, TrainState(step=step, micro_batch=step, epoch=0), lora=lora, optimizer=opt,
                         scheduler={"last_epoch": step}, config_text="name = 'x'\\n")
    save(1)
    save(2)
    print("go", flush=True)
    save(3)
    print("done", flush=True)
""")


def test_sigkill_at_many_points_during_a_checkpoint_save_never_leaves_a_broken_newest(
        tmp_path: Path, record_property) -> None:
    kills = 24
    survived: dict[int, int] = {}
    # How long the step-3 write takes as seen from here, from "go" to "done".
    timing = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "timing")], stdout=subprocess.PIPE,
                              text=True)
    for line in timing.stdout:
        if line.strip() == "go":
            t0 = time.monotonic()
        elif line.strip() == "done":
            write_s = time.monotonic() - t0
    timing.wait()
    for i in range(kills):
        root = tmp_path / f"run{i}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if line.strip() == "go":
                break
        # Spread the kill points from the start of the step-3 write to past its end.
        time.sleep(write_s * 1.3 * i / (kills - 1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        newest = latest_checkpoint(root)
        assert newest is not None
        loaded = load_checkpoint(newest)
        assert loaded.state.step in (2, 3) and loaded.optimizer["state"][7]["exp_avg"].shape == (256, 1024)
        for path in list_checkpoints(root):
            load_checkpoint(path)
        survived[loaded.state.step] = survived.get(loaded.state.step, 0) + 1
    record_property("summary", f"SIGKILL: {kills} kill points across a {write_s * 1000:.0f} ms checkpoint write; "
                               f"the newest complete checkpoint loaded every time "
                               f"(step 2: {survived.get(2, 0)}, step 3: {survived.get(3, 0)})")


def test_kill_9_mid_run_then_resume_finishes(sample_project: Path, record_property) -> None:
    _set(sample_project, "save.every_n_steps=1", "save.keep=2")
    proc = _start(sample_project, "--max-steps", "2000")
    _wait_for_steps(sample_project, proc, 4)
    proc.kill()
    proc.wait()
    newest = latest_checkpoint(ProjectPaths(sample_project).checkpoints)
    assert newest is not None
    step = load_checkpoint(newest).state.step
    # The dead run's lock does not block the resume.
    resumed = _start(sample_project, "--resume", "--max-steps", str(step + 2))
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out
    assert f"resumed from {newest.name}" in out
    record_property("summary", f"kill -9 during training: resumed from step {step} and finished")
