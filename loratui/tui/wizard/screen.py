"""The project wizard: six steps from a folder of images to a started run.

Every value that passes its checks is written to ``loratui.toml`` as soon as
typing pauses (and at once on leaving a step or quitting), so quitting at any
point loses nothing and ``loratui open`` carries on from the file. Start is
refused, with the list of reasons, while anything is invalid.
"""

from __future__ import annotations

from pathlib import Path

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Button, ContentSwitcher, Footer, Static

from loratui.config import CONFIG_NAME, ConfigError, ProjectConfig, field_spec, load_config
from loratui.models.family_defaults import FAMILY_SETTINGS
from loratui.project import create_project
from loratui.tui.wizard.base import ConfigEdited, WizardState, WizardStep
from loratui.tui.wizard.fields import ConfigField
from loratui.tui.wizard.services import Services
from loratui.tui.wizard.step_captions import CaptionsStep
from loratui.tui.wizard.step_images import ImagesStep
from loratui.tui.wizard.step_lora import LoraStep
from loratui.tui.wizard.step_model import ModelStep
from loratui.tui.wizard.step_review import ReviewStep
from loratui.tui.wizard.step_training import TrainingStep

SAVE_DELAY = 0.25
STEPS: tuple[type[WizardStep], ...] = (ImagesStep, CaptionsStep, ModelStep, LoraStep, TrainingStep, ReviewStep)


def load_or_create(project_dir: Path) -> tuple[ProjectConfig, str]:
    """The project's config, creating the project when there is none; and why it could not be read."""
    if not (project_dir / CONFIG_NAME).exists():
        return create_project(project_dir), ""
    try:
        return load_config(project_dir), ""
    except ConfigError as exc:
        return ProjectConfig(name=project_dir.name), str(exc)


class WizardScreen(Screen[Path | None]):
    """Set up a project step by step; dismisses with the project folder when the user starts training."""

    CSS_PATH = "wizard.tcss"

    BINDINGS = [
        Binding("ctrl+n", "next", "Next", priority=True, tooltip="Next step (Start on the last one)"),
        Binding("ctrl+b", "back", "Back", priority=True, tooltip="Previous step"),
        Binding("escape", "back", "Back", show=False),
        *(Binding(str(n), f"goto({n})", f"Step {n}", show=False) for n in range(1, len(STEPS) + 1)),
    ]

    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]

    step: reactive[int] = reactive(1, init=False)
    """The step on screen, 1-based."""

    class Start(Message):
        """The user pressed Start on a valid project; the app opens the dashboard and trains it."""

        def __init__(self, project_dir: Path) -> None:
            super().__init__()
            self.project_dir = project_dir

    def __init__(self, project_dir: Path, *, services: Services | None = None, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        project_dir = Path(project_dir).expanduser().absolute()
        cfg, problem = load_or_create(project_dir)
        self.state = WizardState(project_dir, cfg, services or Services(), load_problem=problem)
        # A default value in the file is taken as not chosen yet; the model's family may replace it.
        self.state.chosen = {path for path in FAMILY_SETTINGS if self.state.get(path) != field_spec(path).default}
        self.steps = [cls(self.state) for cls in STEPS]
        self._unsaved: set[str] = set()
        self._save_timer: Timer | None = None
        self._bar: tuple[object, ...] = ()

    @property
    def project_dir(self) -> Path:
        return self.state.project_dir

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="wizard-title", markup=False)
        yield Static(id="step-bar")
        with ContentSwitcher(initial=self.steps[0].id, id="wizard-steps"):
            yield from self.steps
        yield Static("", id="wizard-hint", markup=False)
        with Horizontal(id="wizard-nav"):
            yield Button("◂ Back", id="wizard-back", compact=True, tooltip="ctrl+b / Escape")
            yield Static(id="wizard-status", markup=False)
            yield Button("Next ▸", id="wizard-next", compact=True, tooltip="ctrl+n")
        yield Footer()

    def _title(self) -> str:
        return f" loratui · project {self.state.cfg.name} · {CONFIG_NAME} is saved as you go"

    async def on_mount(self) -> None:
        if self.state.load_problem:
            self.set_status(f"{self.state.load_problem.splitlines()[0]} Values shown are defaults; "
                            "every change you make is written over the file.", error=True)
        await self._show_step(1)

    # -- navigation ---------------------------------------------------------

    def action_next(self) -> None:
        if self.step == len(STEPS):
            self.action_start()
        else:
            self.step += 1

    def action_back(self) -> None:
        if self.step > 1:
            self.step -= 1
        else:
            self.set_status("This is the first step; ctrl+q quits (everything is already saved).")

    def action_goto(self, number: int) -> None:
        if 1 <= number <= len(STEPS):
            self.step = number

    async def watch_step(self, old: int, new: int) -> None:
        if self.steps[old - 1].built:
            self.steps[old - 1].left()
        self.save_now()
        await self._show_step(new)

    async def _show_step(self, number: int) -> None:
        step = self.steps[number - 1]
        await step.build()
        # Hiding the focused widget makes Textual pick a new focus itself, racing ours below.
        self.set_focus(None)
        self.query_one(ContentSwitcher).current = step.id
        step.entered()
        last = number == len(STEPS)
        self.query_one("#wizard-next", Button).label = "Start ▸" if last else "Next ▸"
        self.query_one("#wizard-back", Button).disabled = number == 1
        self.refresh_step_bar()
        self.call_after_refresh(self._focus_step, step)

    def _focus_step(self, step: WizardStep) -> None:
        if self.steps[self.step - 1] is not step:
            return  # the user has already moved on (keys pressed faster than steps build)
        # Not the screen's focus chain: right after the switch it may still list the old step.
        if step.first_focus:
            step.query_one(step.first_focus).focus()
            return
        for widget in step.query("*"):
            # A scrolling form is focusable too, but the user wants its first field.
            if widget.can_focus and not widget.disabled and not widget.has_class("wizard-form"):
                widget.focus()
                return

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        field = next((w for w in event.widget.ancestors_with_self if isinstance(w, ConfigField)), None)
        self.query_one("#wizard-hint", Static).update(field.help if field is not None else "")

    @on(Button.Pressed, "#wizard-next")
    def _next_pressed(self) -> None:
        self.action_next()

    @on(Button.Pressed, "#wizard-back")
    def _back_pressed(self) -> None:
        self.action_back()

    # -- saving ---------------------------------------------------------------

    def on_config_field_changed(self, event: ConfigField.Changed) -> None:
        self.state.set(event.field.path, event.value)
        if event.field.path in FAMILY_SETTINGS and event.value != self.state.proposed.get(event.field.path):
            self.state.chosen.add(event.field.path)
        self._changed(event.field.path)

    def on_config_field_error_changed(self, event: ConfigField.ErrorChanged) -> None:
        self.refresh_step_bar()

    def on_config_edited(self, event: ConfigEdited) -> None:
        self._changed(event.path)

    def _changed(self, path: str) -> None:
        self._unsaved.add(path)
        # Rewriting the file on every keystroke makes typing lag; write once it pauses.
        if self._save_timer is not None:
            self._save_timer.stop()
        self._save_timer = self.set_timer(SAVE_DELAY, self.save_now)
        for step in self.steps:
            if step.built:
                step.config_changed(path)
        self.refresh_step_bar()

    @property
    def pending_save(self) -> bool:
        """True while a change waits for the pause that writes it."""
        return bool(self._unsaved)

    def save_now(self) -> None:
        """Write every change not yet in loratui.toml."""
        if self._save_timer is not None:
            self._save_timer.stop()
            self._save_timer = None
        if not self._unsaved:
            return
        failure = self.state.save()
        if failure:
            self.set_status(failure, error=True)
            return
        self.set_status(f"saved {', '.join(sorted(self._unsaved))} to {CONFIG_NAME}")
        self._unsaved.clear()

    def on_unmount(self) -> None:
        if self._unsaved:  # quitting within SAVE_DELAY of the last keystroke keeps it too
            self.state.save()

    def set_status(self, text: str, *, error: bool = False) -> None:
        status = self.query_one("#wizard-status", Static)
        status.update(text)
        status.set_class(error, "-error")

    # -- validity -------------------------------------------------------------

    def problems(self) -> list[str]:
        """Everything that stops training from starting, each with the step it is on."""
        found = []
        for number, step in enumerate(self.steps, start=1):
            found.extend(f"{number} {step.title} · {problem}" for problem in step.problems())
        return found

    def refresh_step_bar(self) -> None:
        bars = self.query("#step-bar")
        if not bars:
            return  # the screen is closing: a late worker's answer has nothing left to update
        parts: list[Content] = []
        for number, step in enumerate(self.steps, start=1):
            invalid = bool(step.problems())
            label = f" {number} {step.title}{' !' if invalid else ''} "
            style = "reverse bold" if number == self.step else ("$text-error" if invalid else "")
            parts.append(Content.styled(label, f"{style} @click=screen.goto({number})".strip()))
        bar = Content(" ").join(parts)
        # An unchanged bar need not cost a layout pass per keystroke. (Content's == only
        # compares the text, so the styles are compared too.)
        key = (bar.plain, tuple(bar.spans))
        if key != self._bar:
            self._bar = key
            bars.first(Static).update(bar)

    def action_start(self) -> None:
        problems = self.problems()
        if problems:
            self.step = len(STEPS)
            self.notify("\n".join(problems[:6]), title="Start needs these fixed first", severity="error",
                        timeout=8)
            return
        for step in self.steps:
            if step.built:
                step.left()
        self.save_now()
        self.app.post_message(self.Start(self.project_dir))
        self.dismiss(self.project_dir)
