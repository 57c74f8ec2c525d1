"""Caption tools of the Captions step: the tag frequency table (the counts the LoRA file's
ss_tag_frequency will hold), find/replace, removing tags that match a list, the trigger
word in or out, and Undo of the newest change. Every change is kept in the backup first."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from loratui.captioning.backup import CaptionBackup, restore_latest
from loratui.captioning.targets import CaptionJob, caption_target
from loratui.captioning import tools
from loratui.errors import UserError


class CaptionToolsScreen(ModalScreen[bool]):
    """Dismisses with True when any caption changed, so the step reloads them."""

    DEFAULT_CSS = """
    CaptionToolsScreen { align: center middle; background: $background 60%; }
    CaptionToolsScreen .dialog { width: 100; max-width: 100%; height: 90%;
        border: thick $primary; background: $surface; padding: 0 2; }
    CaptionToolsScreen .dialog--title { text-style: bold; color: $primary; margin: 1 0 0 0; }
    CaptionToolsScreen #ct-table { height: 1fr; min-height: 4; margin-top: 1; }
    CaptionToolsScreen .ct-row { height: 1; margin-top: 1; }
    CaptionToolsScreen .ct-row Label { width: 16; }
    CaptionToolsScreen .ct-row Label.-inline { width: auto; padding: 0 1; }
    CaptionToolsScreen .ct-row Input { width: 1fr; }
    CaptionToolsScreen .ct-row Button { margin-left: 1; }
    CaptionToolsScreen #ct-status { height: auto; color: $text-muted; margin: 1 0; }
    CaptionToolsScreen #ct-status.-error { color: $text-error; }
    """

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, project_dir: Path) -> None:
        super().__init__()
        self.project_dir = project_dir
        self.jobs: list[CaptionJob] = []
        self.changed = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Caption tools", classes="dialog--title")
            yield Static("", id="ct-summary", markup=False)
            yield DataTable(id="ct-table", cursor_type="row", zebra_stripes=True)
            with Horizontal(classes="ct-row"):
                yield Label("find")
                yield Input(id="ct-find", compact=True, placeholder="text in every caption")
                yield Label("with", classes="-inline")
                yield Input(id="ct-replace", compact=True, placeholder="(nothing removes it)")
                yield Button("Replace", id="ct-do-replace", compact=True)
            with Horizontal(classes="ct-row"):
                yield Label("remove tags")
                yield Input(id="ct-remove", compact=True, placeholder="e.g. watermark, *_background")
                yield Button("Remove", id="ct-do-remove", compact=True)
            with Horizontal(classes="ct-row"):
                yield Label("trigger word")
                yield Button("Add to all", id="ct-add-trigger", compact=True)
                yield Button("Remove from all", id="ct-remove-trigger", compact=True)
                yield Button("Undo last", id="ct-undo", compact=True)
            yield Static("", id="ct-status", markup=False)

    def on_mount(self) -> None:
        table = self.query_one("#ct-table", DataTable)
        table.add_columns("count", "tag")
        self._reload()

    def _reload(self) -> None:
        try:
            self.jobs = caption_target(self.project_dir).jobs
        except UserError as exc:
            self.jobs = []
            self._status(str(exc), error=True)
        counts = tools.frequency_total(self.jobs)
        captioned = sum(1 for j in self.jobs if j.text)
        self.query_one("#ct-summary", Static).update(
            f"{len(counts)} distinct tags in {captioned} captions of {len(self.jobs)} images "
            "(the counts the LoRA file's ss_tag_frequency will hold)")
        table = self.query_one("#ct-table", DataTable)
        table.clear()
        for tag, count in counts.items():
            table.add_row(str(count), tag)

    def _apply(self, what: str, change: Callable[[CaptionJob], str]) -> None:
        backup = CaptionBackup(self.project_dir, what)
        result = tools.apply_to_captions(self.jobs, change, backup)
        self.changed |= bool(result.changed)
        message = f"{what}: changed {len(result.changed)} caption file(s)"
        if result.failures:
            message += f"; could not write {len(result.failures)}: {result.failures[0]}"
        self._reload()
        self._status(message, error=bool(result.failures))

    def _value(self, wid: str) -> str:
        return self.query_one(f"#{wid}", Input).value

    @on(Button.Pressed, "#ct-do-replace")
    @on(Input.Submitted, "#ct-find, #ct-replace")
    def _replace(self) -> None:
        find, replace = self._value("ct-find"), self._value("ct-replace")
        if not find:
            self._status("Type the text to find first.", error=True)
            return
        self._apply(f"replace {find!r} with {replace!r}", lambda j: tools.replace_text(j.text, find, replace))

    @on(Button.Pressed, "#ct-do-remove")
    @on(Input.Submitted, "#ct-remove")
    def _remove(self) -> None:
        patterns = tools.parse_tag_list(self._value("ct-remove"))
        if not patterns:
            self._status("Type the tags to remove first (commas between them; * matches anything).", error=True)
            return
        self._apply(f"remove tags {', '.join(patterns)}", lambda j: tools.remove_tags(j.text, patterns))

    @on(Button.Pressed, "#ct-add-trigger")
    def _add_trigger(self) -> None:
        if not any(j.trigger for j in self.jobs):
            self._status("No trigger word: set it on the Captions step first.", error=True)
            return
        self._apply("add the trigger word", lambda j: tools.add_trigger(j.text, j.trigger))

    @on(Button.Pressed, "#ct-remove-trigger")
    def _remove_trigger(self) -> None:
        self._apply("remove the trigger word", lambda j: tools.remove_trigger(j.text, j.trigger))

    @on(Button.Pressed, "#ct-undo")
    def _undo(self) -> None:
        try:
            result = restore_latest(self.project_dir)
        except UserError as exc:
            self._status(str(exc), error=True)
            return
        self.changed = True
        self._reload()
        kept = f"; kept {len(result.kept)} edited since" if result.kept else ""
        self._status(f"undid {result.what or result.folder.name}: restored {result.restored}, "
                     f"removed {result.removed}{kept}")

    def action_close(self) -> None:
        self.dismiss(self.changed)

    def _status(self, text: str, *, error: bool = False) -> None:
        status = self.query_one("#ct-status", Static)
        status.update(text)
        status.set_class(error, "-error")
