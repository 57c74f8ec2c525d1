"""The first screen of a bare ``loratui``: recent projects, new project, open a folder."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, OptionList, Static
from textual.widgets.option_list import Option

from loratui.config import CONFIG_NAME
from loratui.tui.modals import Choice, ChoiceModal, FolderPrompt
from loratui.tui.widgets.status_bar import StatusBar

WELCOME = ("Train a Stable Diffusion LoRA from the keyboard: pick images, caption them, choose a base model, "
           "train, and keep a .safetensors file that loads in ComfyUI, A1111/Forge and diffusers.")


class StartScreen(Screen[None]):
    """Choose what to work on."""

    TITLE = "Start"
    HELP = """
Pick a recent project with the arrow keys and Enter, press n to make a new project
(a folder with loratui.toml and an images/ folder; the wizard then walks through
the setup), or o to open any project folder. In the folder prompt, → accepts the
suggested completion and Tab moves to the folder tree.
"""

    BINDINGS = [
        Binding("n", "new", "New project"),
        Binding("o", "open", "Open folder"),
        Binding("d,delete", "forget", "Forget selected"),
        Binding("q", "app.quit", "Quit"),
    ]

    class OpenProject(Message):
        """The user chose an existing project folder."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    class ForgetProject(Message):
        """The user removed a folder from the recent projects."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    class NewProject(Message):
        """The user chose a folder for a new project."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    def __init__(self, recent: list[str]) -> None:
        super().__init__()
        self.recent = list(recent)

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="start-body"):
            yield Static(WELCOME, id="welcome")
            yield Label("Recent projects", classes="section-title")
            yield OptionList(id="recent")
            yield Static("", id="recent-empty")
            yield Label("n  new project     o  open a folder     Enter  open the selected one", id="start-keys")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.title, self.sub_title = "loratui", "start"
        self.query_one("#status", StatusBar).text = f"Settings and recent projects: {self._settings_hint()}"
        self.set_recent(self.recent)

    def _settings_hint(self) -> str:
        path = getattr(self.app, "settings_path", None)
        if path is None:
            from loratui.settings import settings_path

            path = settings_path()
        return str(path)

    def set_recent(self, recent: list[str]) -> None:
        self.recent = list(recent)
        try:
            options = self.query_one("#recent", OptionList)
        except NoMatches:
            return  # not composed yet: on_mount draws self.recent
        options.clear_options()
        for path in self.recent:
            exists = (Path(path) / CONFIG_NAME).is_file()
            label = Text.assemble((Path(path).name or path, "bold"), "  ", (path, "dim"),
                                  ("" if exists else "  (missing)", "dim italic"))
            options.add_option(Option(label, id=path))
        empty = self.query_one("#recent-empty", Static)
        empty.update("" if self.recent else "None yet. Press n to create a project or o to open one.")
        empty.display = not self.recent
        options.display = bool(self.recent)
        if self.recent:
            options.highlighted = 0  # Enter opens the most recent project straight away
            options.focus()

    @on(OptionList.OptionSelected, "#recent")
    def _open_recent(self, event: OptionList.OptionSelected) -> None:
        if not event.option.id:
            return
        path = Path(event.option.id)
        if not (path / CONFIG_NAME).is_file():
            self.notify(f"{path} is no longer a project (no {CONFIG_NAME}); press d to forget it.",
                        severity="warning")
            return
        self.post_message(self.OpenProject(path))

    def action_new(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is not None:
                self.post_message(self.NewProject(path))

        self.app.push_screen(FolderPrompt("New project", "Folder for the new project (created if missing):",
                                          action_label="Create"), chosen)

    def action_open(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is None:
                return
            if (path / CONFIG_NAME).is_file():
                self.post_message(self.OpenProject(path))
                return

            def create(answer: str | None) -> None:
                if answer == "create":
                    self.post_message(self.NewProject(path))

            self.app.push_screen(ChoiceModal(
                "Not a loratui project",
                f"{path} has no {CONFIG_NAME}. Create a new project there?",
                [Choice("create", "Create project", "primary", "y"), Choice("cancel", "Cancel", "default", "n")],
            ), create)

        self.app.push_screen(FolderPrompt("Open project", f"A project folder (one with {CONFIG_NAME}):",
                                          action_label="Open"), chosen)

    def action_forget(self) -> None:
        options = self.query_one("#recent", OptionList)
        if options.highlighted is None:
            return
        option = options.get_option_at_index(options.highlighted)
        if option.id:
            self.post_message(self.ForgetProject(Path(option.id)))
