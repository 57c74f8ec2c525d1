"""A stand-in for ``loratui.engine.runner.run_training`` that needs no torch.

Same signature and contract as the real engine: it emits events through
``emit`` from the calling thread, reads the real :class:`CommandChannel`
between steps, blocks while paused, saves on STOP and raises after emitting
Failed. Its values and timestamps are fixed, so screens drawn from it are
the same on every run. It writes small real files (sample PNGs, checkpoint
folders, metrics.jsonl, train.log, the LoRA) so the dashboard reads what a
real run would leave behind.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Callable, Sequence

from loratui.commands import Command, CommandChannel
from loratui.config import ConfigError, load_config
from loratui.events import (
    CheckpointSaved,
    Event,
    Failed,
    Finished,
    Paused,
    Resumed,
    SampleReady,
    Started,
    Status,
    StepDone,
    ValidationDone,
)
from loratui.project import ProjectPaths

EPOCH = 1_700_000_000.0
"""Fixed start time of every fake run (2023-11-14 22:13:20 UTC)."""
STEP_SECONDS = 0.5
"""Pretend each step takes this long: timestamps advance by it, so ETA and elapsed are fixed."""


def fake_loss(step: int) -> float:
    """A decaying loss with deterministic wiggle, like a real run's."""
    return 0.08 + 0.25 * math.exp(-step / 25) + 0.02 * math.sin(step * 1.7)


def fake_val_loss(step: int) -> float:
    """Falls until step 20, then rises: a run that starts to overfit, as the held-out loss shows it."""
    return 0.15 + 0.0002 * (step - 20) ** 2


class FakeEngineError(RuntimeError):
    pass


class FakeEngine:
    """Call it like ``run_training``; inspect ``received`` for the commands it acted on.

    ``hold_at``: after that step the engine waits (as if a step were very long) and keeps
    serving commands until :meth:`release` is called or it is stopped; tests use it to act
    on a run that is guaranteed to be in progress.
    """

    def __init__(self, total_steps: int = 40, *, hold_at: int | None = None, fail_at: int | None = None,
                 sample_every: int = 0, checkpoint_every: int = 0, step_delay: float = 0.0,
                 prompts: Sequence[str] = ("a photo of sks dog",), lora_name: str = "fake_lora",
                 validate_every: int = 0) -> None:
        self.validate_every = validate_every
        self._best: tuple[int, float] | None = None
        self.total_steps = total_steps
        self.hold_at = hold_at
        self.fail_at = fail_at
        self.sample_every = sample_every
        self.checkpoint_every = checkpoint_every
        self.step_delay = step_delay
        self.prompts = list(prompts)
        self.lora_name = lora_name
        self.received: list[Command] = []
        self.calls: list[dict] = []
        self.holding = threading.Event()
        self._release = threading.Event()
        self._root = Path(".")
        self._emit: Callable[[Event], None] = lambda e: None
        self._step = 0
        self._total = total_steps

    def release(self) -> None:
        self._release.set()

    def __call__(self, project_dir: Path, *, emit: Callable[[Event], None], commands: CommandChannel,
                 resume: bool = False, overrides: Sequence[str] = (), max_steps: int | None = None) -> None:
        self.calls.append({"project_dir": Path(project_dir), "resume": resume, "overrides": tuple(overrides),
                           "max_steps": max_steps})
        self._root = Path(project_dir)
        self._emit = emit
        self._total = max_steps or self.total_steps
        start, resumed_from = (self._latest_checkpoint() if resume else (0, None))
        self._step = start
        (self._root / "logs").mkdir(parents=True, exist_ok=True)
        if not resume:
            (self._root / "logs" / "metrics.jsonl").unlink(missing_ok=True)
        self._send(Status(text="loading the fake model", time=self._t(start)))
        self._send(Started(total_steps=self._total, start_step=start, steps_per_epoch=10, num_images=10,
                           device="cpu", family="sd1", precision="fp32", trainable_params=797_184,
                           resumed_from=resumed_from, time=self._t(start)))
        for step in range(start + 1, self._total + 1):
            if self._serve(commands.drain(), commands):
                return
            if self.fail_at == step:
                message = f"fake failure at step {step}: CUDA out of memory (tried to allocate 2.00 GiB)"
                self._send(Failed(message=message, log_path=str(self._root / "logs" / "train.log"), step=step,
                                  time=self._t(step)))
                raise FakeEngineError(message)
            self._step = step
            self._do_step(step)
            if self.validate_every and step % self.validate_every == 0:
                self._validate(step)
            if self.sample_every and step % self.sample_every == 0:
                self._sample(step)
            if self.checkpoint_every and step % self.checkpoint_every == 0:
                self._checkpoint(step, "interval")
            if self.hold_at == step:
                self.holding.set()
                while not self._release.is_set():
                    if self._serve([c] if (c := commands.wait(timeout=0.02)) else [], commands):
                        return
            elif self.step_delay:
                self._release.wait(self.step_delay)
        self._checkpoint(self._total, "final")
        self._finish(stopped_early=False)

    # ------------------------------------------------------------------------------------

    def _t(self, step: int) -> float:
        return EPOCH + step * STEP_SECONDS

    def _send(self, event: Event) -> None:
        with (self._root / "logs" / "train.log").open("a", encoding="utf-8") as log:
            log.write(f"{event.kind}: {event.to_json()}\n")
        self._emit(event)

    def _serve(self, batch: list[Command], commands: CommandChannel) -> bool:
        """Act on commands; True when the run has ended."""
        for command in batch:
            self.received.append(command)
            if command is Command.DETACH:
                return True  # the screen let go; a real run would go on in its own process
            if command is Command.PAUSE:
                self._send(Paused(step=self._step, time=self._t(self._step)))
                while True:
                    nxt = commands.wait()
                    self.received.append(nxt)  # type: ignore[arg-type]
                    if nxt is Command.RESUME:
                        self._send(Resumed(step=self._step, time=self._t(self._step)))
                        break
                    if nxt in (Command.STOP, Command.ABORT):
                        return self._end(nxt)
                    if nxt is Command.DETACH:
                        return True
                    if nxt is not None:
                        self._serve_one(nxt)
            elif command in (Command.STOP, Command.ABORT):
                return self._end(command)
            else:
                self._serve_one(command)
        return False

    def _serve_one(self, command: Command) -> None:
        if command is Command.SAMPLE_NOW:
            self._sample(self._step)
        elif command is Command.CHECKPOINT_NOW:
            self._checkpoint(self._step, "request")

    def _end(self, command: Command) -> bool:
        if command is Command.STOP:
            self._checkpoint(self._step, "stop")
            self._finish(stopped_early=True)
            return True
        # As the real engine does: an abort is an outcome, nothing is saved.
        self._send(Finished(step=self._step, lora_path=None, outcome="aborted", time=self._t(self._step)))
        return True

    def _do_step(self, step: int) -> None:
        event = StepDone(step=step, total_steps=self._total, epoch=(step - 1) // 10 + 1, loss=fake_loss(step),
                         lr=1e-4, step_time_s=STEP_SECONDS, data_time_s=0.05, compute_time_s=0.4,
                         optimizer_time_s=0.05, samples_per_s=2.0, ram_mb=2048.0, gpu_alloc_mb=3072.0,
                         gpu_peak_mb=4096.0, skipped_steps=0, time=self._t(step))
        with (self._root / "logs" / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(event.to_json() + "\n")
        self._send(event)

    def _validate(self, step: int) -> None:
        loss = fake_val_loss(step)
        improved = self._best is None or loss < self._best[1]
        if improved:
            self._best = (step, loss)
        assert self._best is not None
        event = ValidationDone(step=step, val_loss=loss, band_losses={"t0-499": loss * 1.1, "t500-999": loss * 0.9},
                               images=2, eval_time_s=0.1, cost_share=0.02, best_step=self._best[0],
                               best_val_loss=self._best[1], time=self._t(step))
        with (self._root / "logs" / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(event.to_json() + "\n")
        self._send(event)
        if improved:
            self._checkpoint(step, "best")

    def _sample(self, step: int) -> None:
        from PIL import Image

        folder = self._root / "samples" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, prompt in enumerate(self.prompts):
            path = folder / f"{i:02d}.png"
            img = Image.new("RGB", (32, 32))
            # A diagonal gradient whose hue depends on the prompt: easy to tell apart on screen.
            img.putdata([((x * 8) % 256, (y * 8) % 256, (i * 90 + step) % 256) for y in range(32) for x in range(32)])
            img.save(path)
            (folder / f"{i:02d}.txt").write_text(prompt, encoding="utf-8")
            self._send(SampleReady(step=step, path=str(path), prompt=prompt, seed=i + 1, time=self._t(step)))

    def _checkpoint(self, step: int, reason: str) -> None:
        folder = self._root / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        best = self._best[0] if self._best else None
        (folder / "state.json").write_text(json.dumps({"step": step, "best_step": best}), encoding="utf-8")
        self._send(CheckpointSaved(step=step, path=str(folder), reason=reason, time=self._t(step), best_step=best))

    def _finish(self, *, stopped_early: bool) -> None:
        lora = self._lora_path()
        lora.parent.mkdir(parents=True, exist_ok=True)
        lora.write_bytes(b"fake")
        self._send(Finished(step=self._step, lora_path=str(lora), outcome="stopped" if stopped_early else "finished",
                            time=self._t(self._step)))

    def _lora_path(self) -> Path:
        """Where the real engine writes it: output/<output name>.safetensors."""
        try:
            return ProjectPaths(self._root).lora_file(load_config(self._root))
        except ConfigError:
            return self._root / "output" / f"{self.lora_name}.safetensors"

    def _latest_checkpoint(self) -> tuple[int, str | None]:
        folders = sorted((self._root / "checkpoints").glob("step-*"))
        if not folders:
            return 0, None
        return int(folders[-1].name.split("-")[1]), str(folders[-1])
