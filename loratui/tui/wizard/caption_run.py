"""The captioning panel of the Captions step: choose a captioner, run it over the project's
images with a progress bar and an estimate, stop it half way if need be.

The model runs in a thread of this process (torch is imported there, never at module
level); its only contact with the screen is ``post_message``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static

MODES = [("only images without a caption", "skip"), ("replace every caption (old ones kept in the backup)",
                                                     "overwrite"), ("add new tags to existing captions", "append")]


@dataclass
class CaptionSettings:
    """What the panel shows when it opens: the last values used in this wizard."""

    model: str = "vlm"
    prompt: str = ""
    max_length: str = "160"
    general_threshold: str = "0.35"
    character_threshold: str = "0.85"
    blacklist: str = ""
    mode: str = "skip"
    extra: dict[str, str] = field(default_factory=dict)


def eta_text(done: int, total: int, seconds_per_image: float | None, device: str) -> str:
    if seconds_per_image is None:
        return f"captioned {done}/{total} on {device}"
    left = seconds_per_image * (total - done)
    about = f"about {left / 60:.0f} min left" if left >= 120 else f"about {left:.0f} s left"
    return f"captioned {done}/{total} on {device} · {seconds_per_image:.2f} s per image · {about}"


class CaptionRunScreen(ModalScreen[bool]):
    """Dismisses with True when any caption was written, so the step reloads them."""

    DEFAULT_CSS = """
    CaptionRunScreen { align: center middle; background: $background 60%; }
    CaptionRunScreen .dialog { width: 90; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 2; }
    CaptionRunScreen .dialog--title { text-style: bold; color: $primary; margin: 1 0 0 0; }
    CaptionRunScreen .cr-row Input { background: $panel; }
    CaptionRunScreen .cr-row { height: 1; }
    CaptionRunScreen #cr-intro { margin-bottom: 1; color: $text-muted; }
    CaptionRunScreen .cr-row Label { width: 22; }
    CaptionRunScreen .cr-row Input, CaptionRunScreen .cr-row Select { width: 1fr; }
    CaptionRunScreen #cr-progress { margin-top: 1; }
    CaptionRunScreen #cr-status { height: auto; color: $text-muted; margin-top: 1; }
    CaptionRunScreen #cr-status.-error { color: $text-error; }
    CaptionRunScreen .dialog--buttons { height: auto; align-horizontal: right; margin: 0 0 1 0; }
    CaptionRunScreen .dialog--buttons Button { margin-left: 1; }
    """

    BINDINGS = [Binding("escape", "close", "Close / stop"), Binding("f5", "run", "Run")]

    class Progressed(Message):
        def __init__(self, text: str, done: int, total: int) -> None:
            super().__init__()
            self.text, self.done, self.total = text, done, total

    class Finished(Message):
        def __init__(self, text: str, error: bool, wrote: int) -> None:
            super().__init__()
            self.text, self.error, self.wrote = text, error, wrote

    def __init__(self, project_dir: Path, settings: CaptionSettings) -> None:
        super().__init__()
        self.project_dir = project_dir
        self.settings = settings
        self.running = False
        self.wrote = 0
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(classes="dialog"):
            yield Label("Caption the images", classes="dialog--title")
            yield Static("model: a folder, an .onnx tagger, a hub id; 'vlm' = Qwen2.5-VL-3B-Instruct, 'tags' = "
                         "WD EVA02 tagger. Replaced captions are kept: Undo in the tools (F6) restores them.",
                         id="cr-intro", markup=False)
            for label, wid, value in (("model", "cr-model", s.model), ("prompt (VLM)", "cr-prompt", s.prompt),
                                      ("max length (tokens)", "cr-max-length", s.max_length),
                                      ("general threshold", "cr-general", s.general_threshold),
                                      ("character threshold", "cr-character", s.character_threshold),
                                      ("tag blacklist", "cr-blacklist", s.blacklist)):
                with Horizontal(classes="cr-row"):
                    yield Label(label)
                    yield Input(value, id=wid, compact=True,
                                placeholder="the model's default" if wid == "cr-prompt" else "")
            with Horizontal(classes="cr-row"):
                yield Label("which images")
                yield Select(MODES, value=s.mode, allow_blank=False, id="cr-mode", compact=True)
            yield ProgressBar(id="cr-progress", show_eta=False)
            yield Static("Enter or F5 runs; Escape stops a run, or closes.", id="cr-status", markup=False)
            with Horizontal(classes="dialog--buttons"):
                yield Button("Run", id="cr-run", variant="primary", compact=True)
                yield Button("Close", id="cr-close", compact=True)

    def _collect(self) -> CaptionSettings:
        def value(wid: str) -> str:
            return self.query_one(f"#{wid}", Input).value.strip()

        s = self.settings
        s.model, s.prompt, s.max_length = value("cr-model"), value("cr-prompt"), value("cr-max-length")
        s.general_threshold, s.character_threshold = value("cr-general"), value("cr-character")
        s.blacklist = value("cr-blacklist")
        s.mode = str(self.query_one("#cr-mode", Select).value)
        return s

    def _options(self, s: CaptionSettings):  # noqa: ANN202 - CaptionOptions, imported lazily
        from loratui.captioning.base import CaptionOptions
        from loratui.captioning.tools import parse_tag_list

        try:
            max_length = int(s.max_length)
            general, character = float(s.general_threshold), float(s.character_threshold)
        except ValueError as exc:
            raise ValueError(f"max length is a whole number and thresholds are between 0 and 1 ({exc})") from exc
        if max_length < 1 or not (0 <= general <= 1 and 0 <= character <= 1):
            raise ValueError("max length is at least 1 and thresholds are between 0 and 1")
        return CaptionOptions(prompt=s.prompt, max_length=max_length, general_threshold=general,
                              character_threshold=character, blacklist=parse_tag_list(s.blacklist))

    @on(Input.Submitted)
    @on(Button.Pressed, "#cr-run")
    def action_run(self) -> None:
        if self.running:
            return
        settings = self._collect()
        try:
            options = self._options(settings)
        except ValueError as exc:
            self._status(str(exc), error=True)
            return
        self.running = True
        self._stop.clear()
        self.query_one("#cr-run", Button).disabled = True
        self.query_one("#cr-close", Button).label = "Stop"
        self._status(f"loading {settings.model} …")
        self._caption(settings.model, options, settings.mode)

    @work(thread=True, exclusive=True, group="caption", exit_on_error=False)
    def _caption(self, model: str, options, mode: str) -> None:  # noqa: ANN001
        from loratui.captioning.backup import CaptionBackup
        from loratui.captioning.loading import open_captioner, resolve_name
        from loratui.captioning.run import CaptionRun, to_caption
        from loratui.captioning.targets import caption_target
        from loratui.errors import UserError

        try:
            target = caption_target(self.project_dir)
            todo, skipped = to_caption(target.jobs, mode)
            if not todo:
                self.post_message(self.Finished(f"all {skipped} images already have a caption; nothing to do. "
                                                 "Choose 'replace' or 'add tags' to caption them again.", False, 0))
                return
            captioner = open_captioner(model, options)
        except UserError as exc:
            self.post_message(self.Finished(str(exc), True, 0))
            return
        name = resolve_name(model)
        run = CaptionRun(captioner, CaptionBackup(target.base, f"wizard captioning with {name} ({mode})"), mode=mode)
        self.post_message(self.Progressed(f"{name} on {captioner.device}: captioning {len(todo)} image(s)",
                                          0, len(todo)))

        def progress(p) -> None:  # noqa: ANN001
            self.post_message(self.Progressed(eta_text(p.done, p.total, p.seconds_per_image, captioner.device),
                                              p.done, p.total))

        try:
            out = run.run(target.jobs, progress=progress, should_stop=self._stop.is_set)
        finally:
            captioner.close()
        self.post_message(self.Finished(self._summary(out, skipped, mode), bool(out.failed or out.stopped),
                                        len(out.written)))

    @staticmethod
    def _summary(out, skipped: int, mode: str) -> str:  # noqa: ANN001
        parts = [f"wrote {len(out.written)} caption(s) in {out.seconds:.1f} s"]
        if skipped:
            parts.append(f"{skipped} already captioned, skipped")
        if out.failed:
            parts.append(f"skipped {len(out.failed)}: {out.failed[0]}")
        if out.empty:
            parts.append(f"the model wrote nothing for {len(out.empty)}")
        if out.stopped:
            rest = ("Run again captions the rest" if mode == "skip" else
                    "the images not reached keep their captions; Undo in the tools (F6) reverts this run")
            parts.append(f"{out.stopped}: the captions written are whole; {rest}")
        return "; ".join(parts)

    def on_caption_run_screen_progressed(self, event: Progressed) -> None:
        bar = self.query_one("#cr-progress", ProgressBar)
        bar.update(total=max(1, event.total), progress=event.done)
        self._status(event.text)

    def on_caption_run_screen_finished(self, event: Finished) -> None:
        self.running = False
        self.wrote += event.wrote
        self.query_one("#cr-run", Button).disabled = False
        self.query_one("#cr-close", Button).label = "Close"
        self._status(event.text, error=event.error)

    def on_worker_state_changed(self, event) -> None:  # noqa: ANN001
        from textual.worker import WorkerState

        if event.state == WorkerState.ERROR:  # a bug, not bad input: say so rather than hang
            self.on_caption_run_screen_finished(self.Finished(f"captioning failed: {event.worker.error!r}",
                                                              True, 0))

    @on(Button.Pressed, "#cr-close")
    def action_close(self) -> None:
        if self.running:
            self._stop.set()
            self._status("stopping after this batch …")
            return
        self._collect()
        self.dismiss(self.wrote > 0)

    def on_unmount(self) -> None:
        self._stop.set()  # quitting the app mid-run ends the worker after its batch, not after every image

    def _status(self, text: str, *, error: bool = False) -> None:
        status = self.query_one("#cr-status", Static)
        status.update(text)
        status.set_class(error, "-error")
