"""Dialogs: a question with a few answers, an error with its log, a folder prompt, the log."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from rich.console import RenderableType
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, DirectoryTree, Input, Label, Static

from loratui.tui.widgets.log_view import LogView


@dataclass(frozen=True)
class Choice:
    value: str
    label: str
    variant: str = "default"  # a Button variant: default, primary, success, warning, error
    key: str | None = None
    """A single key that picks this answer without moving focus (shown underlined in the label)."""


class ChoiceModal(ModalScreen[str | None]):
    """Asks one question; dismisses with the chosen value, or None on Escape."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"),
                Binding("left", "app.focus_previous", "Previous", show=False),
                Binding("right", "app.focus_next", "Next", show=False)]

    def __init__(self, title: str, body: RenderableType, choices: Iterable[Choice], *,
                 classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self.title_text = title
        self.body = body
        self.choices = list(choices)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog--title")
            yield Static(self.body, classes="dialog--body")
            with Horizontal(classes="dialog--buttons"):
                for choice in self.choices:
                    label = f"{choice.label} [{choice.key}]" if choice.key else choice.label
                    yield Button(label, variant=choice.variant, id=f"choice-{choice.value}")  # type: ignore[arg-type]

    def on_key(self, event: events.Key) -> None:
        for choice in self.choices:
            if choice.key and event.key == choice.key:
                event.stop()
                self.dismiss(choice.value)
                return

    @on(Button.Pressed)
    def _chosen(self, event: Button.Pressed) -> None:
        self.dismiss((event.button.id or "").removeprefix("choice-"))

    def action_cancel(self) -> None:
        self.dismiss(None)


class ErrorModal(ModalScreen[None]):
    """A failure, said plainly, with where to read more. The app stays usable behind it."""

    BINDINGS = [Binding("escape,enter", "close", "Close")]

    def __init__(self, title: str, message: str, log_path: str | None = None) -> None:
        super().__init__(classes="-error")
        self.title_text = title
        self.message = message
        self.log_path = log_path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog--title")
            yield Static(self.message, classes="dialog--body", markup=False)
            if self.log_path:
                yield Label(f"Full log: {self.log_path}", classes="dialog--hint", markup=False)
            with Horizontal(classes="dialog--buttons"):
                yield Button("Close", variant="error", id="close")

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)


class PathSuggester(Suggester):
    """Completes the last part of a typed path from the folders that exist."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        expanded = os.path.expanduser(value)
        parent, prefix = os.path.split(expanded)
        try:
            names = sorted(e.name for e in os.scandir(parent or ".") if e.is_dir() and e.name.startswith(prefix)
                           and (prefix.startswith(".") or not e.name.startswith(".")))
        except OSError:
            return None
        if not names or names[0] == prefix:
            return None
        return value + names[0][len(prefix):] + os.sep


class FolderTree(DirectoryTree):
    """A DirectoryTree of folders only: files are not what is being chosen."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [p for p in paths if p.is_dir() and not p.name.startswith(".")]


class FolderPrompt(ModalScreen[Path | None]):
    """Asks for a folder: type it (→ accepts the completion) or pick it in the tree (Tab to reach it)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, hint: str, *, start: Path | None = None, action_label: str = "OK") -> None:
        super().__init__()
        self.title_text = title
        self.hint = hint
        self.start = (start or Path.cwd()).expanduser()
        self.action_label = action_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -tall"):
            yield Label(self.title_text, classes="dialog--title")
            yield Label(self.hint, classes="dialog--hint", markup=False)
            yield Input(value=str(self.start) + os.sep, suggester=PathSuggester(), id="folder-input")
            yield Label("", id="folder-error", classes="dialog--error")
            yield FolderTree(self.start, id="folder-tree")
            with Horizontal(classes="dialog--buttons"):
                yield Button(self.action_label, variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#folder-input", Input).focus()

    @on(DirectoryTree.DirectorySelected)
    def _picked(self, event: DirectoryTree.DirectorySelected) -> None:
        field = self.query_one("#folder-input", Input)
        field.value = str(event.path)
        field.cursor_position = len(field.value)

    @on(Input.Submitted, "#folder-input")
    @on(Button.Pressed, "#ok")
    def _submit(self) -> None:
        raw = self.query_one("#folder-input", Input).value.strip()
        if not raw:
            self.query_one("#folder-error", Label).update("Type a folder path first.")
            return
        self.dismiss(Path(os.path.expanduser(raw)).resolve())

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class LogScreen(ModalScreen[None]):
    """The training log file as it grows, and the run's own status lines."""

    BINDINGS = [Binding("escape,l,q", "close", "Close log")]

    def __init__(self, log_file: Path | None, status_lines: Iterable[str]) -> None:
        super().__init__()
        self.log_file = log_file
        self.status_lines = list(status_lines)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -wide"):
            yield Label(f"Log — {self.log_file}" if self.log_file else "Log", classes="dialog--title",
                        markup=False)
            yield LogView(self.log_file, id="log-file")
            yield Label("Run events", classes="dialog--subtitle")
            events_log = LogView(None, id="log-events", classes="-events")
            yield events_log

    def on_mount(self) -> None:
        events_log = self.query_one("#log-events", LogView)
        for line in self.status_lines:
            events_log.write(line)
        if self.log_file is None or not self.log_file.exists():
            self.query_one("#log-file", LogView).write("(no log file yet)")

    def add_status(self, line: str) -> None:
        self.query_one("#log-events", LogView).write(line)

    def action_close(self) -> None:
        self.dismiss(None)


# The dashboard's questions, worded in one place ------------------------------------------

def _of(step: int, total: int | None) -> str:
    return f"step {step} of {total or '?'}"


def stop_dialog(step: int, total: int | None) -> ChoiceModal:
    return ChoiceModal(
        "Stop training?",
        f"At {_of(step, total)}. A checkpoint and the LoRA are saved first; you can resume from the "
        "checkpoint later.",
        [Choice("stop", "Stop and save", "warning", "y"), Choice("cancel", "Keep training", "primary", "n")])


def resume_dialog(last_step: int, total: int | None, checkpoint_step: int, checkpoint: str) -> ChoiceModal:
    return ChoiceModal(
        "Resume training?",
        f"This project's last run stopped at {_of(last_step, total)}. The newest checkpoint is step "
        f"{checkpoint_step} ({checkpoint}).",
        [Choice("resume", "Resume", "primary", "r"), Choice("restart", "Start over", "warning", "o"),
         Choice("later", "Not now", "default", "n")])


def quit_dialog(step: int, total: int | None) -> ChoiceModal:
    return ChoiceModal(
        "Quit while training?",
        f"Training is at {_of(step, total)}. Detach leaves it training in the background: come back with "
        "`loratui attach DIR` from any terminal. Stopping properly saves a checkpoint and the LoRA (after the "
        "step in progress) before quitting.",
        [Choice("detach", "Detach (keep training)", "primary", "d"),
         Choice("stop", "Stop, save and quit", "warning", "y"),
         Choice("abort", "Quit without saving", "error", "a"),
         Choice("cancel", "Cancel", "default", "n")])


def force_quit_dialog() -> ChoiceModal:
    return ChoiceModal(
        "Still stopping",
        "The engine is finishing its step and saving. Quitting now may leave the last checkpoint incomplete.",
        [Choice("wait", "Wait", "primary", "n"), Choice("now", "Quit now", "error", "y")])
