"""``loratui train DIR --headless``: the engine in the main thread, rich on the console.

Signals map onto the same commands the dashboard's keys send: the first
Ctrl+C (or SIGTERM) asks the engine to finish the step, save and stop; a
second Ctrl+C leaves at once (every file is written atomically, so nothing is
left half-written). SIGHUP is ignored so a dropped SSH connection outside tmux
does not end the run, as with ``nohup``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from loratui.commands import Command, CommandChannel
from loratui.events import Advice, CheckpointSaved, Event, Failed, Finished, NotifyDone, NotifyPending, Paused, \
    Resumed, SampleReady, Started, Status, StepDone, ValidationDone
from loratui.loss_smoothing import LossSmoother

EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_ABORTED = 1


class HeadlessConsole:
    """An event sink that draws a progress bar and prints everything else as lines."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(bar_width=12), TextColumn("eta"),
            TimeRemainingColumn(compact=True), TextColumn("{task.fields[stats]}"), console=console, transient=False)
        self.task: int | None = None
        self.smoother = LossSmoother()
        self.finished: Finished | None = None
        # Piped to a file (nohup, CI logs) a live bar prints nothing useful; print a line now and then.
        self.live = console.is_terminal
        self._last_line = 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, Started):
            self.console.print(
                f"training {event.num_images} images on {event.device} ({event.family}, {event.precision}), "
                f"{event.trainable_params:,} LoRA parameters, steps {event.start_step}→{event.total_steps}")
            if self.live:
                self.progress.start()
                self.task = self.progress.add_task("train", total=event.total_steps, completed=event.start_step,
                                                   stats="")
        elif isinstance(event, StepDone):
            smoothed = self.smoother.update(event.loss)
            stats = (f"loss {event.loss:.4f} smoothed {smoothed:.4f} lr {event.lr:.1e} "
                     f"{1 / event.step_time_s if event.step_time_s else 0:.1f}it/s ep {event.epoch}")
            if event.skipped_steps:
                stats += f"  skipped {event.skipped_steps}"
            if self.task is not None:
                self.progress.update(self.task, completed=event.step, stats=stats)
            elif event.time - self._last_line >= 10 or event.step == event.total_steps or event.step == 1:
                self._last_line = event.time
                self.console.print(f"step {event.step}/{event.total_steps}  {stats}", highlight=False)
        elif isinstance(event, Status):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            if event.progress is None or event.progress >= 1.0:
                self.console.print(f"[{style}]{event.text}[/]", highlight=False)
        elif isinstance(event, CheckpointSaved):
            best = " (lowest validation loss so far)" if event.reason == "best" else ""
            self.console.print(f"checkpoint saved: {event.path}{best}")
        elif isinstance(event, SampleReady):
            source = f", {event.source}" if event.source else ""
            self.console.print(f"sample: {event.path}  ({event.prompt!r}, seed {event.seed}{source})",
                               highlight=False)
        elif isinstance(event, ValidationDone):
            self.console.print(validation_line(event), highlight=False)
        elif isinstance(event, Advice):
            self.console.print(f"[bold yellow]advisor[/] (step {event.step}): {event.text}", highlight=False)
        elif isinstance(event, Paused):
            self.console.print(f"paused at step {event.step}")
        elif isinstance(event, Resumed):
            self.console.print(f"resumed at step {event.step}")
        elif isinstance(event, Finished):
            self.finished = event
            self.progress.stop()
        elif isinstance(event, Failed):
            self.progress.stop()
        elif isinstance(event, NotifyPending):
            self.console.print(f"in {event.seconds:.0f} s: {event.what} (cancel from a dashboard: loratui attach)",
                               highlight=False)
        elif isinstance(event, NotifyDone):
            self.console.print(f"notification: {event.detail}", highlight=False)

    def close(self) -> None:
        self.progress.stop()


def validation_line(event: ValidationDone) -> str:
    bands = " ".join(f"{name} {value:.4f}" for name, value in event.band_losses.items())
    best = "new best" if event.best_step == event.step else f"best {event.best_val_loss:.4f} at step {event.best_step}"
    return (f"validation at step {event.step}: val_loss {event.val_loss:.4f} ({bands}); {best}; "
            f"{event.images} image(s) in {event.eval_time_s:.1f} s, {event.cost_share:.1%} of the run so far")


class SignalBridge:
    """Turns SIGINT/SIGTERM into engine commands; remembers which one asked to stop."""

    def __init__(self, commands: CommandChannel, console: Console) -> None:
        self.commands = commands
        self.console = console
        self.stop_signal: int | None = None
        self._old: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        if hasattr(signal, "SIGHUP"):
            self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: object) -> None:
        if self.stop_signal is not None:
            # Second request: leave now. Files are written by rename, so none is left half-written.
            self.console.print("\nstopped without saving.")
            os._exit(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)
        self.stop_signal = signum
        self.console.print("\nstopping after this step and saving a checkpoint… (Ctrl+C again to quit at once)")
        self.commands.send(Command.STOP)


def run_headless(project_dir: Path, *, resume: bool = False, overrides: Sequence[str] = (),
                 max_steps: int | None = None, console: Console | None = None) -> int:
    # A headless run is a run service like any other: dashboards can attach to it.
    from loratui.run.service import serve_run

    # soft_wrap: long paths stay on one line, so a resume command can be copied as printed.
    console = console or Console(soft_wrap=True)
    commands = CommandChannel()
    view = HeadlessConsole(console)
    bridge = SignalBridge(commands, console)
    bridge.install()
    try:
        lora = serve_run(project_dir, emit=view, commands=commands, resume=resume, overrides=overrides,
                         max_steps=max_steps, on_ready=lambda record: console.print(
                             f"[dim]attach a dashboard from any terminal: loratui attach {project_dir}[/]",
                             highlight=False))
    except KeyboardInterrupt:
        console.print("interrupted before training started; nothing was saved.")
        return EXIT_SIGINT
    finally:
        view.close()
        bridge.restore()
    if bridge.stop_signal is not None:
        console.print(f"stopped at step {view.finished.step if view.finished else '?'}; checkpoint saved. "
                      f"Resume with: loratui train {project_dir} --headless --resume")
        return EXIT_SIGINT if bridge.stop_signal == signal.SIGINT else EXIT_SIGTERM
    outcome = view.finished.outcome if view.finished else "finished"
    if outcome == "aborted":
        console.print(f"aborted at step {view.finished.step if view.finished else '?'} from a dashboard; nothing "
                      f"saved after the last checkpoint. Resume with: loratui train {project_dir} --headless --resume")
        return EXIT_ABORTED
    if outcome == "stopped":
        console.print(f"stopped at step {view.finished.step if view.finished else '?'}; checkpoint saved. "
                      f"Resume with: loratui train {project_dir} --headless --resume")
    console.print(f"[bold green]done[/]: {lora}")
    console.print(f"  diffusers: pipe.load_lora_weights(\"{lora}\")")
    console.print("  ComfyUI: copy it to ComfyUI/models/loras/; A1111/Forge: models/Lora/")
    return 0
