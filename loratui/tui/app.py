"""The Textual application: screens, themes, settings, and the engine it drives.

Nothing here imports torch: the first screen draws at once while a thread
worker imports torch and diffusers in the background, so they are warm when
the wizard counts a LoRA's parameters, and names the device in the status bar.
Training and the wizard's measured step run in child processes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen

from loratui.commands import CommandChannel
from loratui.config import CONFIG_NAME, ConfigError
from loratui.events import Event
from loratui.project import create_project
from loratui.settings import Settings, load_settings, save_settings
from loratui.tui.dashboard import DashboardScreen
from loratui.tui.help_screen import HelpScreen, help_for
from loratui.tui.modals import ErrorModal
from loratui.tui.screen_diff import DiffedOutput
from loratui.tui.start_screen import StartScreen
from loratui.tui.themes import DEFAULT_THEME, discover_themes, resolve_theme_name

Mode = Literal["start", "new", "open"]
Engine = Callable[..., None]


def default_engine(project_dir: Path, *, emit: Callable[[Event], None], commands: CommandChannel,
                   resume: bool = False, overrides: Sequence[str] = (), max_steps: int | None = None) -> None:
    """The real engine, in a child process (see ``loratui.engine.child`` for why)."""
    from loratui.engine.child import run_in_child

    run_in_child(project_dir, emit=emit, commands=commands, resume=resume, overrides=overrides,
                 max_steps=max_steps)


def default_attach(project_dir: Path, *, emit: Callable[[Event], None], commands: CommandChannel) -> None:
    """Relay a run that is already training (started by --detach, --headless or another dashboard)."""
    from loratui.engine.child import attach_to_run

    attach_to_run(project_dir, emit=emit, commands=commands)


def live_run_exists(project_dir: Path) -> bool:
    from loratui.run.client import live_record

    return live_record(project_dir) is not None


def default_warmup() -> str:
    """Import the heavy libraries now, so the wizard's parameter count does not wait for them."""
    import torch
    import diffusers  # noqa: F401 - imported for its side effect of being cached

    if torch.cuda.is_available():
        device = f"CUDA: {torch.cuda.get_device_name(0)}"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "Apple MPS"
    else:
        device = "CPU"
    return f"ready (torch {torch.__version__.split('+')[0]}, {device})"


class LoratuiApp(DiffedOutput, App[None]):
    """loratui: set up a LoRA, train it, watch it, keep the result."""

    CSS_PATH = "app.tcss"
    TITLE = "loratui"
    BINDINGS = [
        Binding("f1,question_mark", "help", "Help", key_display="F1/?"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]

    backend_status: reactive[str] = reactive("")
    """What the background import of torch has reached, for status lines."""

    class BackendReady(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, project_dir: Path | None = None, *, mode: Mode = "start", engine: Engine | None = None,
                 theme: str | None = None, clock: Callable[[], float] = time.time,
                 warmup: Callable[[], str] | None = default_warmup, settings_path: Path | None = None,
                 wizard: Callable[[Path], Screen[Any]] | None = None, autostart: bool = False,
                 resume: bool = False, max_steps: int | None = None, overrides: Sequence[str] = (),
                 attacher: Engine | None = None, live_run: Callable[[Path], bool] | None = None) -> None:
        super().__init__()
        self.project_dir = Path(project_dir).expanduser().resolve() if project_dir else None
        self.mode: Mode = mode if project_dir else "start"
        self.engine: Engine = engine or default_engine
        # With a stand-in engine (tests) nothing runs elsewhere unless a stand-in attacher says so.
        self.attacher: Engine | None = attacher or (default_attach if engine is None else None)
        self.live_run: Callable[[Path], bool] = live_run or (live_run_exists if engine is None else (lambda p: False))
        self.clock = clock
        self.warmup = warmup
        self.settings_path = settings_path
        self.settings: Settings = load_settings(settings_path)
        self.requested_theme = theme
        self.wizard_factory = wizard
        # `loratui train DIR`: open the dashboard and start at once, with these engine options.
        self.autostart, self.resume, self.max_steps, self.overrides = autostart, resume, max_steps, tuple(overrides)
        self._themes_ready = False
        self._attached_at_start = False
        self._last_open_attached = False

    # Start-up ---------------------------------------------------------------------------

    def on_mount(self) -> None:
        self._install_themes()
        if self.settings.problem:
            self.notify(self.settings.problem, severity="warning", timeout=10)
        self.push_screen(StartScreen(self.settings.recent))
        if self.mode == "new" and self.project_dir is not None:
            self.new_project(self.project_dir)
        elif self.mode == "open" and self.project_dir is not None:
            self.open_project(self.project_dir, start=self.autostart, resume=self.resume)
            self._attached_at_start = self._last_open_attached
        if self.warmup is not None and not self._attached_at_start:
            self.backend_status = "loading torch…"

    def on_ready(self) -> None:
        # After the first frame: importing torch competes for the GIL and would delay drawing it.
        # A dashboard attached to a run needs no torch (the run has it); importing it there would
        # only cost the machine CPU and hold up a quick detach by the length of the import.
        if self.warmup is not None and not self._attached_at_start:
            self._warm_up()

    def _install_themes(self) -> None:
        themes, problems = discover_themes()
        for theme in themes.values():
            self.register_theme(theme)
        for problem in problems:
            self.notify(problem, severity="warning", timeout=10)
        wanted = self.requested_theme or self.settings.theme or DEFAULT_THEME
        name = resolve_theme_name(wanted, set(self.available_themes))
        if name is None:
            self.notify(f"No theme named {wanted!r}; available: {', '.join(sorted(themes)) or 'none'}.",
                        severity="warning", timeout=10)
            name = resolve_theme_name(DEFAULT_THEME, set(self.available_themes)) or "textual-dark"
        self.theme = name
        self._themes_ready = True
        if self.requested_theme and name == self.requested_theme:
            self._remember_theme(name)

    def watch_theme(self, theme: str) -> None:
        # Also fires when the command palette changes the theme: remember the user's choice.
        if self._themes_ready:
            self._remember_theme(theme)

    def _remember_theme(self, name: str) -> None:
        if self.settings.theme != name:
            self.settings.theme = name
            self._save_settings()

    def _save_settings(self) -> None:
        try:
            save_settings(self.settings, self.settings_path)
        except OSError as exc:
            self.notify(f"Could not save settings: {exc}", severity="warning")

    @work(thread=True, exit_on_error=False, group="warmup")
    def _warm_up(self) -> None:
        assert self.warmup is not None
        try:
            text = self.warmup()
        except Exception as exc:  # noqa: BLE001 - shown to the user, training will report it in full
            text = f"torch not usable: {type(exc).__name__}: {exc}"
        self.post_message(self.BackendReady(text))

    @on(BackendReady)
    def _backend_ready(self, message: BackendReady) -> None:
        self.backend_status = message.text

    # Projects ---------------------------------------------------------------------------

    @on(StartScreen.OpenProject)
    def _open_requested(self, message: StartScreen.OpenProject) -> None:
        self.open_project(message.path)

    @on(StartScreen.NewProject)
    def _new_requested(self, message: StartScreen.NewProject) -> None:
        self.new_project(message.path)

    @on(StartScreen.ForgetProject)
    def _forget_requested(self, message: StartScreen.ForgetProject) -> None:
        self.settings.forget(message.path)
        self._save_settings()
        self._refresh_recent()

    def _refresh_recent(self) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, StartScreen):
                screen.set_recent(self.settings.recent)

    def _remember_project(self, project_dir: Path) -> None:
        self.settings.add_recent(project_dir)
        self._save_settings()
        self._refresh_recent()

    def open_project(self, project_dir: Path, *, start: bool = False, resume: bool = False) -> None:
        if not (project_dir / CONFIG_NAME).is_file():
            self.push_screen(ErrorModal(
                "Not a loratui project",
                f"{project_dir} has no {CONFIG_NAME}. Press n on the start screen to create a project there, "
                f"or run `loratui new {project_dir}`."))
            return
        self._remember_project(project_dir)
        # A run of this project is training (detached, headless, another dashboard): watch that one.
        attach = self.attacher is not None and self.live_run(project_dir)
        self._last_open_attached = attach
        if attach and start:
            self.notify("This project is already training: attached to that run instead of starting another.",
                        timeout=8)
        self.push_screen(DashboardScreen(project_dir, self.engine, clock=self.clock, start=start and not attach,
                                         resume=resume, max_steps=self.max_steps, overrides=self.overrides,
                                         attach=attach, attacher=self.attacher))

    def new_project(self, project_dir: Path) -> None:
        try:
            create_project(project_dir)
        except (ConfigError, OSError) as exc:
            self.push_screen(ErrorModal("Cannot create the project", str(exc)))
            return
        self._remember_project(project_dir)
        self.open_wizard(project_dir)

    def open_wizard(self, project_dir: Path) -> None:
        factory = self.wizard_factory
        if factory is None:
            try:
                from loratui.tui.wizard import WizardScreen
            except ImportError:
                self.notify(f"The setup wizard is not available; edit {project_dir / CONFIG_NAME} by hand.",
                            severity="warning", timeout=8)
                if not isinstance(self.screen, DashboardScreen):
                    self.open_project(project_dir)
                return
            factory = WizardScreen

        # The wizard also posts WizardScreen.Start; its dismissal with the folder is what we act on,
        # so the run is started exactly once.
        def finished(result: Any) -> None:
            if isinstance(result, Path):
                self._begin_training(result)

        self.push_screen(factory(project_dir), finished)

    def _begin_training(self, project_dir: Path) -> None:
        project_dir = project_dir.expanduser().resolve()
        screen = self.screen
        if isinstance(screen, DashboardScreen) and screen.project_dir == project_dir:
            if not screen.state.running:
                screen.reload_and_start()
            return
        self.open_project(project_dir, start=True)

    # Help and quitting ------------------------------------------------------------------

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
            return
        self.push_screen(help_for(self.screen))

    async def action_quit(self) -> None:
        for screen in reversed(self.screen_stack):
            if isinstance(screen, DashboardScreen) and screen.state.running:
                screen.action_quit()
                return
        self.exit()
