"""What every wizard step shares: the project being set up, and the step base class."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.timer import Timer

from loratui.config import CONFIG_NAME, ProjectConfig, cross_check, field_spec, field_specs, save_config
from loratui.project import ProjectPaths
from loratui.tui.wizard.fields import Check, ConfigField
from loratui.tui.wizard.services import Services

if TYPE_CHECKING:
    from loratui.data.scan import ScanReport


@dataclass
class WizardState:
    """The project being set up, and what the slow checks found out about it.

    ``cfg`` only ever holds values that passed every check, so whatever is on
    disk loads again; a field showing an error keeps its last good value here.
    """

    project_dir: Path
    cfg: ProjectConfig
    services: Services = field(default_factory=Services)
    report: ScanReport | None = None
    report_key: tuple[Any, ...] | None = None
    model_info: Any = None
    model_error: str = ""
    load_problem: str = ""
    proposed: dict[str, Any] = field(default_factory=dict)
    """What the wizard last set from the model's family, by config path (models.family_defaults)."""
    chosen: set[str] = field(default_factory=set)
    """Family settings holding a value the user typed (or the project came with): never replaced."""

    @property
    def family(self) -> str | None:
        """The family training will use: model.family when set, else the detected one."""
        chosen = self.cfg.model.family
        return chosen if chosen != "auto" else getattr(self.model_info, "family", None)

    @property
    def paths(self) -> ProjectPaths:
        """The engine's own rules for paths in loratui.toml, so the wizard checks what training will read."""
        return ProjectPaths(self.project_dir)

    def resolve(self, value: str) -> Path:
        """A folder from the config: relative ones are inside the project folder."""
        return self.paths.inside(value, "data.images", must_be_inside=False)

    def show_path(self, path: Path) -> str:
        """A path as the user would type it: relative to the project when inside it."""
        try:
            return path.relative_to(self.project_dir).as_posix() or "."
        except ValueError:
            return str(path)

    def images_dir(self) -> Path:
        return self.paths.images(self.cfg)

    def cross_problem(self, path: str, value: Any) -> str | None:
        """The first rule spanning fields that ``value`` would break, worded for this field."""
        trial = copy.deepcopy(self.cfg)
        spec = field_spec(path)
        setattr(getattr(trial, spec.section), spec.name, value)
        for problem in cross_check(trial):
            if path in problem:
                return problem
        return None

    def set(self, path: str, value: Any) -> None:
        spec = field_spec(path)
        setattr(getattr(self.cfg, spec.section), spec.name, value)

    def get(self, path: str) -> Any:
        spec = field_spec(path)
        return getattr(getattr(self.cfg, spec.section), spec.name)

    def save(self) -> str | None:
        """Write loratui.toml; returns a sentence for the user when that fails."""
        try:
            save_config(self.project_dir, self.cfg)
        except OSError as exc:
            return f"cannot write {self.project_dir / CONFIG_NAME}: {exc.strerror or exc}"
        return None

    def scan_key(self) -> tuple[Any, ...]:
        """What a scan's findings depend on; a new scan is due when this changes."""
        d = self.cfg.data
        concepts = tuple(repr(c) for c in d.concepts)
        return (str(self.images_dir()), d.resolution, d.bucket_step, d.caption_extension, concepts)


def unlisted(sections: tuple[str, ...], shown: set[str]) -> list[str]:
    """Every field of ``sections`` that no step lays out by hand, in file order.

    Settings added to the config later then still reach the wizard, instead of
    only the file.
    """
    return [spec.path for section in sections for spec in field_specs(section)
            if spec.path not in shown and spec.type is not list]


class ConfigEdited(Message):
    """A step changed ``state.cfg`` itself (not through a ConfigField); the screen saves it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path


class WizardStep(Vertical):
    """One page of the wizard. Subclasses compose their fields with ``self.field``."""

    title: ClassVar[str] = ""
    """Short name shown in the step bar."""

    first_focus: ClassVar[str | None] = None
    """Selector of the widget to focus when the step is shown; None focuses the first one."""

    def __init__(self, state: WizardState) -> None:
        super().__init__(id=f"step-{type(self).__name__.lower()}", classes="wizard-step")
        self.state = state
        self.built = False
        self.fields: list[ConfigField] = []
        self._debounce: Timer | None = None

    def compose_step(self) -> ComposeResult:
        """The step's widgets; composed the first time the step is shown, so the wizard opens fast."""
        yield from ()

    async def build(self) -> None:
        if not self.built:
            self.built = True
            await self.mount_compose(self.compose_step())
            self.on_built()

    def on_built(self) -> None:
        """The step's widgets exist now; fill in what they show."""

    def debounce(self, delay: float, callback: Callable[[], object]) -> None:
        """Run ``callback`` once ``delay`` seconds pass without another call (typing has paused)."""
        self.cancel_debounce()
        self._debounce = self.set_timer(delay, callback)

    def cancel_debounce(self) -> None:
        if self._debounce is not None:
            self._debounce.stop()
            self._debounce = None

    def field(self, path: str, *, check: Check | None = None, **kwargs: Any) -> ConfigField:
        """A field bound to the config: its rules, the extra ``check``, and the cross-field rules."""

        def full_check(value: Any) -> str | None:
            return (check(value) if check else None) or self.state.cross_problem(path, value)

        field = ConfigField(path, self.state.get(path), check=full_check, **kwargs)
        self.fields.append(field)
        return field

    def entered(self) -> None:
        """Called each time the step is shown; refresh whatever other steps may have changed."""

    def left(self) -> None:
        """Called when another step is shown; flush anything not yet written."""

    def problems(self) -> list[str]:
        """What stops training from starting, as ``where: why`` sentences."""
        return [f"{f.path}: {f.error}" for f in self.fields if f.error]

    def config_changed(self, path: str) -> None:
        """A field anywhere in the wizard took a new value (called on built steps only)."""
