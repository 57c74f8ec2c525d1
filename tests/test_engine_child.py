"""The TUI's engine: training in a child process, steered through pipes."""

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


def test_the_child_saves_and_stops_when_the_tui_goes_away(sample_project: Path, record_property) -> None:
    children: list[subprocess.Popen[bytes]] = []
    seen: list[Event] = []

    def emit(event: Event) -> None:
        seen.append(event)
        if isinstance(event, StepDone) and event.step == 1:
            stdin = children[0].stdin
            assert stdin is not None
            stdin.close()  # what the kernel does to the pipe when the TUI dies

    run_in_child(sample_project, emit=emit, commands=CommandChannel(), overrides=NO_SAMPLES,
                 max_steps=50, on_spawn=children.append)

    assert children[0].returncode == 0
    finished = [e for e in seen if isinstance(e, Finished)]
    assert len(finished) == 1 and finished[0].stopped_early
    assert latest_checkpoint(ProjectPaths(sample_project).checkpoints) is not None
    record_property("summary", "TUI gone mid-run (its pipe to the engine closed): the engine saved a "
                               "checkpoint and the LoRA and exited cleanly")
