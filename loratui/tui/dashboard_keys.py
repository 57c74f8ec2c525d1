"""The dashboard's keys: what each does to the run, and when the footer offers it.

Mixed into :class:`~loratui.tui.dashboard.DashboardScreen`, which owns the run's
state and its phase; a key changes the phase only through the screen's
``_set_phase``, so the phase keeps one place to change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.binding import Binding

from loratui.commands import Command
from loratui.tui.modals import LogScreen, force_quit_dialog, quit_dialog, stop_dialog
from loratui.tui.widgets.project_runs import read_project_runs
from loratui.tui.widgets.sample_gallery import SampleGallery

if TYPE_CHECKING:
    from pathlib import Path

    from loratui.commands import CommandChannel
    from loratui.project import ProjectPaths
    from loratui.tui.widgets.run_state import RunState

# Short descriptions: all of them fit an 80-column footer; the tooltips say more.
DASHBOARD_BINDINGS = [
    Binding("t", "train", "Train", tooltip="Start training (or resume a stopped run)"),
    Binding("p", "pause", "Pause", tooltip="Pause after the step in progress; the model stays loaded"),
    Binding("p", "resume", "Resume", tooltip="Continue a paused run"),
    Binding("s", "sample", "Sample", tooltip="Make sample images after the step in progress"),
    Binding("s", "sample_unavailable", "Sample", show=False),
    Binding("c", "checkpoint", "Checkpoint", tooltip="Save a resumable checkpoint after the step in progress"),
    Binding("x", "stop", "Stop", tooltip="Stop and save a checkpoint and the LoRA (asks first)"),
    Binding("l", "log", "Log", tooltip="The training log and the run's events"),
    Binding("e", "edit", "Setup", tooltip="Change images, captions, model and training settings"),
    Binding("q", "quit", "Quit", tooltip="Quit (while training: detach, or stop properly)"),
    Binding("d", "detach", "Detach", show=False, tooltip="Leave the run training in the background"),
    Binding("n", "cancel_notify", "Cancel notify", show=False,
            tooltip="Cancel the end-of-run command before its countdown runs out"),
    Binding("left_square_bracket", "browse_samples(-1)", "Older samples", show=False),
    Binding("right_square_bracket", "browse_samples(1)", "Newer samples", show=False),
    Binding("v", "compare_samples", "Compare samples", show=False,
            tooltip="One prompt's samples across steps side by side; again for the next prompt"),
    Binding("u", "publish", "Publish", tooltip="Write output/NAME-card/: the LoRA, its preview, the samples and "
                                               "a Hugging Face model card (as `loratui export DIR --card`)"),
]


class DashboardKeys:
    """The actions behind DASHBOARD_BINDINGS; the screen that mixes this in provides the rest."""

    if TYPE_CHECKING:  # what DashboardScreen provides
        app: Any
        state: RunState
        commands: CommandChannel
        project_dir: Path
        paths: ProjectPaths
        _aborting: bool
        _quit_when_done: bool
        _detached: bool
        _log_screen: LogScreen | None
        _notify_deadline: float | None

        def query_one(self, selector: str, expect_type: Any = None) -> Any: ...
        def _set_phase(self, phase: str | None = None) -> None: ...
        def _set_status(self, text: str) -> None: ...
        def _offer_resume(self) -> None: ...
        def start_training(self, *, resume: bool) -> None: ...
        def run_worker(self, work: Any, **kwargs: Any) -> Any: ...

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # False hides a key from the footer, None shows it dimmed: pause and resume share p,
        # so only one of them is ever shown; the rest stay visible so the keys can be learnt.
        phase = self.state.phase
        if action == "pause":
            return False if phase == "paused" else (True if phase == "training" else None)
        if action == "resume":
            return phase == "paused"
        if action == "sample_unavailable":
            return phase not in ("training", "paused", "pausing")
        if action in ("sample", "checkpoint", "stop"):
            return True if phase in ("training", "paused", "pausing") else None
        if action in ("train", "edit"):
            return None if self.state.running else True
        if action == "detach":
            return self.state.running
        if action == "cancel_notify":
            return self._notify_deadline is not None
        if action == "publish":
            done = self.state.finished
            return not self.state.running and done is not None and bool(done.lora_path)
        return True

    def _send(self, command: Command) -> None:
        self.commands.send(command)

    def action_pause(self) -> None:
        self._send(Command.PAUSE)
        self._set_phase("pausing")
        self._set_status("Pausing after the step in progress…")

    def action_resume(self) -> None:
        self._send(Command.RESUME)
        self._set_status("Resuming…")

    def action_sample(self) -> None:
        self._send(Command.SAMPLE_NOW)
        self._set_status("Sample requested: it is made after the step in progress.")

    def action_sample_unavailable(self) -> None:
        # `s` is dimmed while nothing trains; pressing it still answers.
        self._set_status("No sample: samples are drawn by a running training (press t to train), or "
                         "from the shell with `loratui sample`.")

    def action_checkpoint(self) -> None:
        self._send(Command.CHECKPOINT_NOW)
        self._set_status("Checkpoint requested: it is saved after the step in progress.")

    def action_stop(self) -> None:
        def answered(choice: str | None) -> None:
            if choice == "stop" and self.state.running:
                self._stop()

        self.app.push_screen(stop_dialog(self.state.step, self.state.total_steps), answered)

    def _stop(self) -> None:
        self._send(Command.STOP)
        self._set_phase("stopping")
        self._set_status("Stopping: saving a checkpoint and the LoRA after the step in progress…")

    def action_train(self) -> None:
        runs = read_project_runs(self.project_dir)
        if runs.resumable:
            self._offer_resume()
        else:
            self.start_training(resume=False)

    def action_browse_samples(self, delta: int) -> None:
        gallery = self.query_one("#samples", SampleGallery)
        gallery.browse(delta)
        self.query_one("#sample-pane").border_title = gallery.caption()

    def action_compare_samples(self) -> None:
        gallery = self.query_one("#samples", SampleGallery)
        gallery.compare_next()
        self.query_one("#sample-pane").border_title = gallery.caption()

    def action_publish(self) -> None:
        done = self.state.finished
        if self.state.running or done is None or not done.lora_path:
            return
        from pathlib import Path

        lora = Path(done.lora_path)
        self._set_status(f"Writing the card folder for {lora.name}…")
        self.run_worker(lambda: self._write_card(lora), thread=True, group="publish", exit_on_error=False)

    def _write_card(self, lora: Path) -> None:
        # A worker thread: the folder copies the LoRA and the samples; the screen only hears the outcome.
        from loratui.errors import UserError
        from loratui.publish.card import card_for_project

        try:
            folder = card_for_project(self.project_dir, lora)
            text = (f"Wrote {folder}/: the LoRA, {lora.stem}.preview.png, images/ and README.md (model card). "
                    f"Upload it with: loratui export {self.project_dir} --card --push OWNER/NAME")
        except UserError as exc:
            text = f"No card folder: {exc}"
        self.app.call_from_thread(self._set_status, text)

    def action_log(self) -> None:
        def closed(_: None) -> None:
            self._log_screen = None

        self._log_screen = LogScreen(self.paths.log_file, list(self.state.log))
        self.app.push_screen(self._log_screen, closed)

    def action_edit(self) -> None:
        open_wizard = getattr(self.app, "open_wizard", None)
        if open_wizard is not None:
            open_wizard(self.project_dir)

    def action_quit(self) -> None:
        if not self.state.running:
            self.app.exit()
            return
        if self._quit_when_done:
            self._confirm_force_quit()
            return

        def answered(choice: str | None) -> None:
            if choice == "detach":
                self.action_detach()
            elif choice == "stop":
                self._quit_when_done = True
                if self.state.phase != "stopping":
                    self._stop()
            elif choice == "abort":
                self._quit_when_done = self._aborting = True
                self._send(Command.ABORT)
                self._set_status("Quitting without saving after the step in progress…")

        self.app.push_screen(quit_dialog(self.state.step, self.state.total_steps), answered)

    def action_detach(self) -> None:
        """Leave: the run keeps training in its own process; any terminal can attach again."""
        if not self.state.running:
            return
        self._detached = True
        self._send(Command.DETACH)
        self.app.exit(message=f"Detached; training goes on in the background. Come back with: "
                              f"loratui attach {self.project_dir}")

    def action_cancel_notify(self) -> None:
        if self._notify_deadline is not None:
            self._send(Command.CANCEL_NOTIFY)
            self._set_status("Cancelling the end-of-run notification…")

    def _confirm_force_quit(self) -> None:
        def answered(choice: str | None) -> None:
            if choice == "now":
                self.app.exit()

        self.app.push_screen(force_quit_dialog(), answered)
