"""The live training dashboard: loss, numbers, samples, checkpoints and the run's controls.

A thread worker relays the run: the real one trains in a process of its own
(a run service, see ``loratui.run``) that this screen starts or attaches to,
and detaching leaves it training; the worker's only contact with the screen
is ``post_message``. Every event is applied to a :class:`RunState` (nothing is
dropped: the loss history keeps every step); drawing is throttled, because a
fast GPU can finish more steps per second than a terminal should repaint.
What each key does lives in ``dashboard_keys``; the phase changes only here.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar, Sparkline
from textual.worker import Worker, WorkerState, get_current_worker

from loratui.commands import Command, CommandChannel
from loratui.events import Event, Failed, Finished, NotifyDone, NotifyPending, Status, StepDone
from loratui.project import ProjectPaths
from loratui.tui.dashboard_keys import DASHBOARD_BINDINGS, DashboardKeys
from loratui.tui.modals import ErrorModal, LogScreen, resume_dialog
from loratui.tui.refresh import DRAW_INTERVAL_S, draw_interval_s  # noqa: F401 - DRAW_INTERVAL_S for benchmarks
from loratui.tui.widgets.checkpoint_list import CheckpointList
from loratui.tui.widgets.finished_panel import FinishedPanel
from loratui.tui.widgets.log_view import FollowingLog
from loratui.tui.widgets.loss_plot import LossPlot
from loratui.tui.widgets.project_runs import ProjectRuns, read_project_runs
from loratui.tui.widgets.run_state import RunState, display_path
from loratui.tui.widgets.sample_gallery import SampleGallery
from loratui.tui.widgets.stats_panel import StatsPanel
from loratui.tui.widgets.status_bar import StatusBar

Engine = Callable[..., None]
SPARK_POINTS = 200


def loss_title(state: RunState) -> str:
    title = "Loss · raw (last steps) and smoothed (whole run)"
    if not state.validations:
        return title
    last = state.validations[-1]
    return (f"{title} · validation {last.val_loss:.4f}, best {last.best_val_loss:.4f} at step {last.best_step} "
            f"(evaluations: {last.cost_share:.0%} of the run)")


class DashboardScreen(DashboardKeys, Screen[None]):
    """Watch and steer one project's training run."""

    TITLE = "Training dashboard"
    HELP = """
The engine reads commands between optimizer steps: pause, sample and checkpoint
take effect after the step in progress. Pausing keeps the model in memory and
resumes at once. Stop saves a checkpoint and the LoRA, then ends the run; you
can resume it later from the checkpoint.

The plot shows the smoothed (EMA) loss over the whole run; the sparkline the raw
loss of the last steps. Diffusion loss is noisy: judge the trend and the samples.

On a small terminal the panes stack: scroll with the arrow keys or Page Up/Down.

Ctrl+P opens the command palette: change the theme there (the choice is remembered).
"""

    BINDINGS = DASHBOARD_BINDINGS

    phase: reactive[str] = reactive("idle")
    """Mirror of the run's phase, so bindings and the status badge follow it."""

    class EngineEvent(Message):
        """One engine event, carried from the worker thread to the screen."""

        def __init__(self, event: Event) -> None:
            super().__init__()
            self.event = event

    def __init__(self, project_dir: Path, engine: Engine, *, clock: Callable[[], float] = time.time,
                 start: bool = False, resume: bool = False, ask_resume: bool = True,
                 max_steps: int | None = None, overrides: Sequence[str] = (), attach: bool = False,
                 attacher: Engine | None = None) -> None:
        super().__init__()
        self.project_dir = Path(project_dir)
        self.paths = ProjectPaths(self.project_dir)
        self.engine = engine
        self.clock = clock
        self.state = RunState(root=self.project_dir)
        self.commands = CommandChannel()
        self.runs: ProjectRuns | None = None
        self._start_on_mount = start
        self._resume_on_start = resume
        self.max_steps = max_steps
        self.overrides = tuple(overrides)
        self._aborting = False
        self._ask_resume = ask_resume
        self._last_draw = 0.0
        self.draw_interval_s = draw_interval_s()
        """Least time between repaints from step events (LORATUI_REFRESH; longer over SSH)."""
        self._draw_pending = False
        self._failure_shown = False
        self._quit_when_done = False
        self._log_screen: LogScreen | None = None
        self._attach_on_mount = attach
        self.attacher = attacher
        self._detached = False
        self._notify_deadline: float | None = None
        self._notify_what = ""

    # Layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="dash-body"):
            with Vertical(id="dash-left"):
                with Vertical(id="run-pane", classes="pane"):
                    yield ProgressBar(id="progress", show_eta=False)
                    yield StatsPanel(self.state, clock=self.clock, id="stats")
                with Vertical(id="checkpoint-pane", classes="pane"):
                    yield CheckpointList(id="checkpoints")
                with Vertical(id="events-pane", classes="pane"):
                    yield FollowingLog(id="events", markup=False, highlight=False, wrap=True, max_lines=500, min_width=20)
            with Vertical(id="dash-right"):
                yield FinishedPanel(id="finished")
                with Vertical(id="loss-pane", classes="pane"):
                    yield Sparkline([], id="spark")
                    yield LossPlot(id="plot")
                with Vertical(id="sample-pane", classes="pane"):
                    yield SampleGallery(id="samples")
        yield StatusBar(id="status")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = str(self.project_dir)
        self.query_one("#run-pane").border_title = "Run"
        self.query_one("#checkpoint-pane").border_title = "Checkpoints"
        self.query_one("#events-pane").border_title = "Events"
        self.query_one("#dash-body").focus()  # arrow keys scroll the stacked panes on small terminals
        self._load_project()
        self.set_interval(1.0, self._tick)
        if self._attach_on_mount and self.attacher is not None:
            self.attach_to_run()
        elif self._start_on_mount:
            self.start_training(resume=self._resume_on_start)
        elif self.runs is not None and self.runs.resumable and self._ask_resume:
            self.call_after_refresh(self._offer_resume)

    def _load_project(self) -> None:
        runs = self.runs = read_project_runs(self.project_dir)
        self.state.cost_per_hour = _cost_per_hour(self.project_dir)
        self.title = f"loratui · {runs.name}"
        self.state.load_rows(runs.rows)
        if self.state.total_steps is None:
            self.state.total_steps = runs.planned_steps  # "Step 0 / 200" before the first run, not "0 / ?"
        self.state.checkpoints = list(runs.checkpoints)
        self.state.validations, self.state.best_step = list(runs.validations), runs.best_step
        self.state.samples = list(runs.samples)
        if runs.finished and runs.lora_file is not None:
            self.state.apply(Finished(step=runs.last_step, lora_path=str(runs.lora_file),
                                      time=runs.lora_file.stat().st_mtime))
        self._set_status(runs.summary())
        self._set_phase()
        self._draw()

    # Training ---------------------------------------------------------------------------

    def start_training(self, *, resume: bool) -> None:
        if self.state.running:
            return
        self.commands = CommandChannel()  # never let a command meant for the last run reach this one
        self._failure_shown = self._aborting = False
        self.state.finished = self.state.failed = None
        self._set_phase("starting")
        self._set_status("Starting: loading models…")
        self._draw()
        self._run_engine(resume)

    def attach_to_run(self) -> None:
        """Watch and steer a run that is already going (started elsewhere, or by an earlier dashboard)."""
        if self.state.running or self.attacher is None:
            return
        self.commands = CommandChannel()
        self._failure_shown = self._aborting = False
        self._set_phase("starting")
        self._set_status("Attached to the running training; catching up…")
        self._draw()
        self._run_engine(False, attach=True)

    def reload_and_start(self) -> None:
        """Start a fresh run after the setup changed (the wizard's Start over this screen)."""
        self._load_project()
        self.start_training(resume=False)

    def _offer_resume(self) -> None:
        runs = self.runs = read_project_runs(self.project_dir)
        self.state.cost_per_hour = _cost_per_hour(self.project_dir)
        newest = runs.newest_checkpoint
        if newest is None:
            return

        def answered(choice: str | None) -> None:
            if choice in ("resume", "restart"):
                self.start_training(resume=choice == "resume")

        self.app.push_screen(resume_dialog(runs.last_step, runs.total_steps, newest.step,
                                           display_path(newest.path, self.project_dir)), answered)

    @work(thread=True, exclusive=True, exit_on_error=False, group="training")
    def _run_engine(self, resume: bool, attach: bool = False) -> None:
        post = self.post_message
        commands = self.commands
        worker = get_current_worker()
        done = threading.Event()

        def emit(event: Event) -> None:
            post(self.EngineEvent(event))

        def detach_when_cancelled() -> None:
            # Textual cancels workers when the app closes, but cannot stop a thread: the relay must be
            # told to let go. The run itself goes on; closing a dashboard never ends a run.
            while not done.is_set():
                if worker.cancelled_event.wait(0.2):
                    commands.send(Command.DETACH)
                    return

        threading.Thread(target=detach_when_cancelled, name="loratui-detach-on-exit", daemon=True).start()
        try:
            if attach and self.attacher is not None:
                self.attacher(self.project_dir, emit=emit, commands=commands)
            else:
                self.engine(self.project_dir, emit=emit, commands=commands, resume=resume,
                            overrides=self.overrides, max_steps=self.max_steps)
        finally:
            done.set()

    @on(EngineEvent)
    def _engine_event(self, message: EngineEvent) -> None:
        event = message.event
        self.state.apply(event)
        if isinstance(event, StepDone):
            self._schedule_draw()
            return
        if isinstance(event, (NotifyPending, NotifyDone)):
            self._notify_event(event)
            return
        if isinstance(event, (Finished, Failed)) and not self._aborting:
            self._announce_end(event)
            if self._quit_when_done and isinstance(event, Finished):
                self.app.exit()  # saved: no need to wait for the run's end-of-run notification
        if isinstance(event, Status) and event.progress is not None and event.progress < 1:
            self._set_status(f"{event.text} ({event.progress:.0%})")
        elif self.state.log:
            line = self.state.log[-1]
            self._set_status(line)
            self.query_one("#events", FollowingLog).write_line(line)
            if self._log_screen is not None:
                self._log_screen.add_status(line)
        if isinstance(event, Failed) and not self._aborting:
            self._show_failure(event.message, event.log_path)
        self._set_phase()
        self._draw(layout=True)

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "training" or not event.worker.is_finished:
            return
        if self._detached:
            return
        if self._aborting:
            # We asked for it (the run ends as Finished with outcome "aborted"): no modal.
            self._set_phase("idle")
            self._set_status(f"Stopped at step {self.state.step} without saving.")
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            if self.state.failed is None:
                self.state.apply(Failed(message=f"{type(error).__name__}: {error}",
                                        log_path=str(self.paths.log_file), time=self.clock()))
            failed = self.state.failed
            self._show_failure(failed.message if failed else str(error),
                               failed.log_path if failed else str(self.paths.log_file))
        elif self.state.running:
            # The engine returned without Finished (an abort): the run is over all the same.
            self._set_phase("idle")
            self._set_status(f"Training ended at step {self.state.step} without saving.")
        self._set_phase()
        self._draw()
        if self._quit_when_done:
            self.app.exit()

    def _notify_event(self, event: NotifyPending | NotifyDone) -> None:
        if isinstance(event, NotifyPending):
            self._notify_deadline = time.monotonic() + event.seconds
            self._notify_what = event.what
            self._tick()
            self.refresh_bindings()
            return
        self._notify_deadline = None
        self.refresh_bindings()
        text = "End-of-run notification cancelled." if event.cancelled else f"Notification: {event.detail}"
        self._set_status(text)
        self.query_one("#events", FollowingLog).write(text)

    def _announce_end(self, event: Finished | Failed) -> None:
        """The bell and a desktop notification (OSC 9): someone in another window wants to know."""
        if isinstance(event, Failed):
            text = f"loratui: {self.project_dir.name} failed at step {event.step if event.step is not None else '?'}"
        else:
            text = f"loratui: {self.project_dir.name} {event.outcome} at step {event.step}"
        self.app.bell()
        driver = getattr(self.app, "_driver", None)
        if driver is not None and not self.app.is_headless:
            driver.write(f"\x1b]9;{text}\x07")

    def _show_failure(self, message: str, log_path: str | None) -> None:
        if self._failure_shown:
            return
        self._failure_shown = True
        self._set_status(f"Training failed: {message.splitlines()[0] if message else ''}")
        self.app.push_screen(ErrorModal("Training failed", message, log_path or str(self.paths.log_file)))

    # Drawing ----------------------------------------------------------------------------

    def _schedule_draw(self) -> None:
        wait = self.draw_interval_s - (time.monotonic() - self._last_draw)
        if wait <= 0:
            self._draw()
        elif not self._draw_pending:
            self._draw_pending = True
            self.set_timer(wait, self._draw)

    def _draw(self, layout: bool = False) -> None:
        self._draw_pending = False
        self._last_draw = time.monotonic()
        s = self.state
        # An unknown total animates the bar: right while the engine loads, misleading while idle.
        total = s.total_steps if s.total_steps or s.phase == "starting" else 1
        self.query_one("#progress", ProgressBar).update(total=total, progress=s.step if s.total_steps else 0)
        # Only events other than steps can change the panel's height (a new row); a whole-screen
        # layout on every step's repaint would cost the training thread GIL time.
        self.query_one("#stats", StatsPanel).refresh(layout=layout)
        self.query_one("#spark", Sparkline).data = s.history.recent(SPARK_POINTS)
        self.query_one("#plot", LossPlot).update_history(s.history, s.total_steps, s.validations)
        self.query_one("#loss-pane").border_title = loss_title(s)
        self.query_one("#checkpoints", CheckpointList).update_checkpoints(s.checkpoints, s.best_step)
        gallery = self.query_one("#samples", SampleGallery)
        gallery.update_samples(s.samples)
        self.query_one("#sample-pane").border_title = gallery.caption()
        self._draw_finished()

    def _draw_finished(self) -> None:
        done = None if self.state.running else self.state.finished
        self.query_one("#finished", FinishedPanel).show(done, self.state.total_steps)

    def _tick(self) -> None:
        if self.state.running:
            self.query_one("#stats", StatsPanel).refresh()  # elapsed time moves on
        if self._notify_deadline is not None:
            left = max(0.0, self._notify_deadline - time.monotonic())
            self._set_status(f"In {left:.0f} s: {self._notify_what}. Press n to cancel.")

    def _set_phase(self, phase: str | None = None) -> None:
        """The one place the screen's phase changes. RunState holds it (events move it there); keys and
        the worker's end move it through here; the reactive follows, for the bindings and the badge."""
        if phase is not None:
            self.state.phase = phase
        self.phase = self.state.phase

    def watch_phase(self, phase: str) -> None:
        self.query_one("#status", StatusBar).phase = phase
        self.refresh_bindings()

    def _set_status(self, text: str) -> None:
        self.query_one("#status", StatusBar).text = text


def _cost_per_hour(project_dir: Path) -> float:
    from loratui.config import ConfigError, load_config
    from loratui.run.notify import cost_per_hour

    try:
        return cost_per_hour(load_config(project_dir))
    except (ConfigError, OSError):
        return 0.0
