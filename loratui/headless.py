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
import time
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
    """Turns SIGINT/SIGTERM into engine commands; remembers which one asked to stop.

    Under a multi-process launcher (torchrun, accelerate launch) one Ctrl+C reaches each process twice:
    from the terminal and passed on by the launcher a moment later. A repeat within ``repeat_s`` is that
    same request, not a second Ctrl+C; and only rank 0 speaks (it decides for the whole run).
    """

    def __init__(self, commands: CommandChannel, console: Console, *, repeat_s: float = 0.0,
                 quiet: bool = False) -> None:
        self.commands = commands
        self.console = console
        self.stop_signal: int | None = None
        self.repeat_s = repeat_s
        self.quiet = quiet
        self._first_at = 0.0
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
            if time.monotonic() - self._first_at < self.repeat_s:
                return
            # Second request: leave now. Files are written by rename, so none is left half-written.
            if not self.quiet:
                self.console.print("\nstopped without saving.")
            os._exit(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)
        self.stop_signal = signum
        self._first_at = time.monotonic()
        if not self.quiet:
            self.console.print("\nstopping after this step and saving a checkpoint… (Ctrl+C again to quit at once)")
        self.commands.send(Command.STOP)


def run_headless(project_dir: Path, *, resume: bool = False, overrides: Sequence[str] = (),
                 max_steps: int | None = None, console: Console | None = None) -> int:
    from loratui.engine.distributed import is_main_process, launched_distributed
    from loratui.engine.runner import prepare_config
    # A headless run is a run service like any other: dashboards can attach to it (rank 0 serves).
    from loratui.run.service import serve_run

    # soft_wrap: long paths stay on one line, so a resume command can be copied as printed.
    console = console or Console(soft_wrap=True)
    if not launched_distributed():
        from loratui.engine.launch import launch, processes_to_start

        processes = processes_to_start(prepare_config(Path(project_dir), overrides))
        if processes > 1:
            args = ["train", str(project_dir), "--headless", *(["--resume"] if resume else []),
                    *(["--max-steps", str(max_steps)] if max_steps is not None else [])]
            for item in overrides:
                args += ["--set", item]
            return launch(processes, args, echo=lambda line: console.print(line, highlight=False))
    commands = CommandChannel()
    view = HeadlessConsole(console)
    main = is_main_process()
    bridge = SignalBridge(commands, console, repeat_s=1.0 if launched_distributed() else 0.0, quiet=not main)
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
    if not main:
        return 0  # rank 0 speaks for the run
    if bridge.stop_signal is not None:
        console.print(f"stopped at step {view.finished.step if view.finished else '?'}; checkpoint saved. "
                      f"Resume with: loratui train {project_dir} --headless --resume")
        if launched_distributed():
            return 0  # a launcher reports any other code as a crash, with a traceback, after a clean stop
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

