"""The TUI's engine: training in a run process of its own, steered through its socket."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from loratui.commands import Command, CommandChannel
from loratui.engine.checkpoint import latest_checkpoint, load_checkpoint
from loratui.engine.child import OUTPUT_NAME, TrainingProcessFailed, run_in_child
from loratui.events import Event, Failed, Finished, Started, StepDone
from loratui.project import ProjectPaths

NO_SAMPLES = ("sample.every_n_steps=0",)


def test_events_arrive_in_order_and_commands_reach_the_child(sample_project: Path, record_property) -> None:
    commands = CommandChannel()
    seen: list[Event] = []

    def emit(event: Event) -> None:
        seen.append(event)
        if isinstance(event, StepDone) and event.step == 2:
            commands.send(Command.STOP)

    run_in_child(sample_project, emit=emit, commands=commands, overrides=NO_SAMPLES, max_steps=50)

    assert any(isinstance(e, Started) for e in seen)
    steps = [e.step for e in seen if isinstance(e, StepDone)]
    assert steps[:2] == [1, 2] and steps == sorted(steps) and len(steps) < 50
    finished = [e for e in seen if isinstance(e, Finished)]
    assert len(finished) == 1 and finished[0].stopped_early
    assert finished[0].lora_path and Path(finished[0].lora_path).exists()
    ckpt = latest_checkpoint(ProjectPaths(sample_project).checkpoints)
    assert ckpt is not None and load_checkpoint(ckpt).state.step == steps[-1]
    assert (ProjectPaths(sample_project).logs / OUTPUT_NAME).exists()
    record_property("summary", f"TUI engine in a child process: Stop sent at step 2 was obeyed at step "
                               f"{steps[-1]}, checkpoint and LoRA saved")


def test_a_killed_training_process_is_reported_as_a_failure(sample_project: Path, record_property) -> None:
    children: list[subprocess.Popen[bytes]] = []
    seen: list[Event] = []

    def emit(event: Event) -> None:
        seen.append(event)
        if isinstance(event, StepDone) and event.step == 1:
            os.kill(children[0].pid, signal.SIGKILL)

    with pytest.raises(TrainingProcessFailed, match="SIGKILL"):
        run_in_child(sample_project, emit=emit, commands=CommandChannel(), overrides=NO_SAMPLES,
                     max_steps=50, on_spawn=children.append)

    failed = [e for e in seen if isinstance(e, Failed)]
    assert len(failed) == 1 and "out-of-memory killer" in failed[0].message
    assert failed[0].log_path and failed[0].log_path.endswith(OUTPUT_NAME)
    record_property("summary", "TUI engine process killed with SIGKILL: reported as a failure naming the "
                               "signal and the output log; the TUI process lives on")


def test_the_run_goes_on_when_the_dashboard_detaches_and_another_can_attach(sample_project: Path,
                                                                          record_property) -> None:
    from loratui.engine.child import attach_to_run
    from loratui.run.record import pid_alive

    children: list[subprocess.Popen[bytes]] = []
    commands = CommandChannel()
    first: list[Event] = []

    def emit(event: Event) -> None:
        first.append(event)
        if isinstance(event, StepDone) and event.step == 1:
            commands.send(Command.DETACH)  # what q → Detach does

    run_in_child(sample_project, emit=emit, commands=commands, overrides=NO_SAMPLES, max_steps=5000,
                 on_spawn=children.append)
    assert pid_alive(children[0].pid) and children[0].poll() is None  # still training

    again = CommandChannel()
    second: list[Event] = []

    def emit_again(event: Event) -> None:
        second.append(event)
        late = [e.step for e in second if isinstance(e, StepDone)]
        if late and late[-1] >= max(e.step for e in first if isinstance(e, StepDone)) + 2:
            again.send(Command.STOP)

    attach_to_run(sample_project, emit=emit_again, commands=again)
    assert any(isinstance(e, Started) for e in second)  # the backlog: a late joiner sees the start
    finished = [e for e in second if isinstance(e, Finished)]
    assert len(finished) == 1 and finished[0].outcome == "stopped"
    assert children[0].wait(timeout=60) == 0
    assert latest_checkpoint(ProjectPaths(sample_project).checkpoints) is not None
    record_property("summary", "dashboard detached at step 1: the run went on; a second dashboard attached, "
                               f"saw the run from its start and stopped it at step {finished[0].step}")
