"""One rank of a training run with scripted commands, for tests/test_multiprocess.py.

Started by torchrun: ``python -m torch.distributed.run --nproc_per_node 2 tests/multiprocess_worker.py
PROJECT SCRIPT_JSON [--set k=v ...]``. Rank 0 sends the commands the script asks for, as the dashboard
would (pause after step N, resume after S seconds, stop after step M); every rank records when each of
its optimizer steps ends, so the test can check that all ranks paused and stopped together.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from loratui.commands import Command, CommandChannel
from loratui.engine import trainer as trainer_module
from loratui.engine.runner import run_training
from loratui.events import Event, Paused, StepDone


def main() -> int:
    project = Path(sys.argv[1])
    script = json.loads(sys.argv[2])
    overrides = [a for a in sys.argv[3:] if a != "--set"]
    rank = int(os.environ["RANK"])
    steps_log = project / "logs" / f"steps-rank{rank}.jsonl"
    steps_log.parent.mkdir(parents=True, exist_ok=True)

    original_step = trainer_module.Trainer._optimizer_step

    def recorded_step(self: trainer_module.Trainer) -> None:
        original_step(self)
        with open(steps_log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.step, "t": time.time()}) + "\n")

    trainer_module.Trainer._optimizer_step = recorded_step  # type: ignore[method-assign]

    commands = CommandChannel()
    events_log = project / "logs" / f"events-rank{rank}.jsonl"

    def emit(event: Event) -> None:
        with open(events_log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"type": type(event).__name__, "step": getattr(event, "step", None),
                                "t": time.time()}) + "\n")
        if isinstance(event, StepDone):
            if event.step == script.get("pause_after"):
                commands.send(Command.PAUSE)
            if event.step == script.get("stop_after"):
                commands.send(Command.STOP)
        elif isinstance(event, Paused):
            threading.Timer(script.get("pause_s", 3.0), commands.send, args=(Command.RESUME,)).start()

    run_training(project, emit=emit, commands=commands, overrides=overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
