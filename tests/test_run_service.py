"""The run service around the engine, driven by hand-made events (no torch): pause watch, cost, records."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loratui.cli import main
from loratui.commands import Command, CommandChannel
from loratui.events import CheckpointSaved, Finished, Paused, Started, StepDone
from loratui.project import create_project
from loratui.run import notify, service
from loratui.run.client import RunClient
from loratui.run.record import read_record
from loratui.run.status import format_line, run_status


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORATUI_STATE_DIR", str(tmp_path / "state"))


def _started() -> Started:
    return Started(total_steps=100, start_step=0, steps_per_epoch=10, num_images=4, device="cpu", family="sd1",
                   precision="fp32", trainable_params=10)


def _step(n: int) -> StepDone:
    return StepDone(step=n, total_steps=100, epoch=0, loss=0.2, lr=1e-4, step_time_s=0.5, data_time_s=0.0,
                    compute_time_s=0.5, optimizer_time_s=0.0, samples_per_s=2.0, ram_mb=1.0)


def test_a_forgotten_pause_saves_a_checkpoint_then_notifies(tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "proj"
    create_project(project)
    marker = tmp_path / "paused.txt"
    monkeypatch.setattr(service, "PAUSE_CHECK_S", 0.05)
    commands = CommandChannel()
    settings = notify.NotifySettings(command=f'echo "$LORATUI_STATUS $LORATUI_STEP" > {marker}',
                                     paused_minutes=0.01, countdown_s=0)
    svc = service.RunService(project.resolve(), commands, settings)
    svc.open()
    try:
        svc.on_event(_started())
        svc.on_event(_step(1))
        svc.on_event(Paused(step=1))
        assert read_record(project).state == "paused"
        # The watch asks the (paused) engine for a checkpoint first; the command waits for it.
        assert commands.wait(timeout=10) is Command.CHECKPOINT_NOW
        time.sleep(0.3)
        assert not marker.exists()
        svc.on_event(CheckpointSaved(step=1, path=str(project / "checkpoints" / "step-000001"), reason="request"))
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text().split() == ["paused", "1"]
    finally:
        svc.close()


def test_status_of_a_live_run_has_the_scripted_keys_and_the_cost(tmp_path: Path, monkeypatch, capsys) -> None:
    project = tmp_path / "proj"
    create_project(project)
    monkeypatch.setenv(notify.COST_ENV, "3.60")
    from loratui.config import load_config

    svc = service.RunService(project.resolve(), CommandChannel(),
                             notify.NotifySettings.from_config(load_config(project)))
    svc.tracker.started_at = time.time() - 3600  # an hour in
    svc.open()
    try:
        svc.on_event(_started())
        for n in range(1, 11):
            svc.on_event(_step(n))
        status = run_status(project)
        assert status["state"] == "training" and status["step"] == 10 and status["total_steps"] == 100
        assert status["loss"] == pytest.approx(0.2) and status["eta_s"] == pytest.approx(90 * 0.5)
        assert status["cost"] == pytest.approx(3.60, rel=0.01)
        assert status["cost_projected"] == pytest.approx(3.60 + 3.60 * 45 / 3600, rel=0.01)
        line = format_line(status)
        assert "training" in line and "step 10/100" in line and "$3.60" in line
        capsys.readouterr()
        assert main(["logs", str(project)]) == 0  # the run so far, as lines (steps thinned by the run's clock)
        lines = capsys.readouterr().out.splitlines()
        assert "started at step 0/100" in lines[0] and "step 1/100" in lines[1]
        with RunClient.connect(project) as client:
            assert client.request("frobnicate")["reply"] == "error"
            assert client.request("pause") == {"reply": "ok", "command": "pause"}
        svc.on_event(Finished(step=10, lora_path=None, outcome="stopped"))
    finally:
        svc.close()
    done = run_status(project)
    assert done["state"] == "stopped" and done["step"] == 10


def test_a_run_whose_process_vanished_is_dead_with_the_command_that_resumes_it(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    create_project(project)
    svc = service.RunService(project.resolve(), CommandChannel(), notify.NotifySettings())
    svc.open()
    svc.on_event(_started())
    svc.record.pid = 2**22 + 11  # as if it had been killed: the record stays, the process is gone
    svc._update_record("training")
    svc.server.close(linger_s=0)
    status = run_status(project)
    assert status["state"] == "dead"
    assert f"loratui train {project.resolve()} --detach --resume" in format_line(status)


def test_a_project_too_deep_for_a_socket_path_still_serves_its_run(tmp_path: Path) -> None:
    project = tmp_path / ("deep" * 20) / ("er" * 30) / "proj"
    create_project(project)
    svc = service.RunService(project.resolve(), CommandChannel(), notify.NotifySettings())
    svc.open()
    try:
        assert svc.server is not None and not svc.server.path.is_relative_to(project)
        assert read_record(project).socket == str(svc.server.path)
        with RunClient.connect(project) as client:
            assert client.request("status")["state"] == "starting"
    finally:
        svc.close()
