"""Step 3, Base model: what to train on, checked as it is typed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Button, Label, Static

from loratui.models.family_defaults import FAMILY_SETTINGS, FAMILY_SOURCES, family_specific, family_start
from loratui.tui.wizard.base import ConfigEdited, WizardStep, unlisted
from loratui.tui.wizard.dir_picker import PathPicker
from loratui.tui.wizard.fields import ConfigField, field_id

BUILTINS = ("builtin:tiny-sd", "builtin:tiny-sd2", "builtin:tiny-sdxl", "builtin:tiny-sd3", "builtin:tiny-flux")
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD 3.x", "flux": "FLUX.1",
                "zimage": "Z-Image", "qwen_image": "Qwen-Image", "chroma": "Chroma", "flux2_klein": "FLUX.2 klein"}
# How the wizard names the settings it proposes from the family, and where they are changed.
SETTING_NAMES = {"train.learning_rate": "learning rate", "lora.preset": "layers", "train.precision": "precision",
                 "train.gradient_checkpointing": "gradient checkpointing", "sample.guidance": "sample guidance"}
# Probing a folder reads a few JSON files, a single file its header; wait for typing to pause.
_PROBE_DELAY = 0.4
_PROBE_INPUTS = ("model.base", "model.config_source", "model.allow_pickle")


class ModelStep(WizardStep):
    """Choose the base model; its family and prediction type are detected and shown."""

    title = "Model"

    BINDINGS = [
        Binding("ctrl+o", "browse", "Browse files"),
    ]

    class Probed(Message):
        def __init__(self, key: tuple[Any, ...], info: Any, error: str) -> None:
            super().__init__()
            self.key = key
            self.info = info
            self.error = error

    def __init__(self, state: Any) -> None:
        super().__init__(state)
        self._probed_key: tuple[Any, ...] | None = None
        self.probing = False

    def compose_step(self) -> ComposeResult:
        yield self.field("model.base", long=True, label="base model",
                         placeholder="builtin:tiny-sd, org/name, a folder or a .safetensors file")
        with Horizontal(id="model-presets"):
            yield Label("built-in tiny models", classes="row-label")
            for name in BUILTINS:
                # Five names and Browse fit an 80-column row only without the shared "tiny-".
                yield Button(name.removeprefix("builtin:tiny-"), id=f"preset-{name[8:]}", compact=True,
                             classes="-small", tooltip=name)
            yield Button("Browse…", id="model-browse", compact=True, tooltip="ctrl+o", classes="-small")
        yield Static("", id="model-result", markup=False)
        yield self.field("model.family", label="family")
        yield self.field("model.prediction_type", label="prediction type")
        yield self.field("model.clip_skip", label="clip skip")
        yield self.field("model.t5_max_length", label="T5 length")
        yield self.field("model.config_source", long=True, label="config source",
                         placeholder="only for a single file: a diffusers folder or hub id")
        yield self.field("model.allow_pickle", label="allow pickle files")
        for path in unlisted(("model",), {f.path for f in self.fields}):
            yield self.field(path)

    # -- probing --------------------------------------------------------------

    def entered(self) -> None:
        if self._probed_key != self._key():
            self._probe_now()

    def config_changed(self, path: str) -> None:
        if path in _PROBE_INPUTS:
            self.debounce(_PROBE_DELAY, self._probe_now)
        elif path == "model.family":
            self._propose_family_start()
            self._show()
        elif path == "model.prediction_type" or path in FAMILY_SETTINGS:
            self._show()

    def on_mount(self) -> None:
        # Start the probe right away: Start needs its verdict even if this step is skipped.
        self._probe_now()

    def on_built(self) -> None:
        self._show()

    def _key(self) -> tuple[Any, ...]:
        m = self.state.cfg.model
        return (m.base, m.config_source, m.allow_pickle)

    def _probe_now(self) -> None:
        key = self._key()
        self.probing = True
        self._show()
        base, source, pickle = key
        # Relative paths mean inside the project, exactly as training will read them.
        paths = self.state.paths
        self._probe(key, paths.input_path(base), paths.input_path(source) or None, pickle)

    @work(thread=True, exclusive=True, group="probe", exit_on_error=False)
    def _probe(self, key: tuple[Any, ...], spec: str, config_source: str | None, allow_pickle: bool) -> None:
        services = self.state.services
        try:
            info = services.probe(spec, config_source, allow_pickle)
        except Exception as exc:  # noqa: BLE001 - sorted below: the user's mistake or a bug
            expected = services.model_errors()
            text = str(exc) if isinstance(exc, expected) else f"the check failed: {type(exc).__name__}: {exc}"
            self.post_message(self.Probed(key, None, text))
            return
        self.post_message(self.Probed(key, info, ""))

    def on_model_step_probed(self, event: Probed) -> None:
        if event.key != self._key():
            return
        self.probing = False
        self._probed_key = event.key
        self.state.model_info = event.info
        self.state.model_error = event.error
        self._propose_family_start()
        self._show()
        self.screen.refresh_step_bar()  # type: ignore[attr-defined]

    def _show(self) -> None:
        if not self.built:
            return
        result = self.query_one("#model-result", Static)
        result.set_class(bool(self.state.model_error) and not self.probing, "-error")
        if self.probing:
            result.update("checking the model …")
            return
        if self.state.model_error:
            result.update(f"✗ {self.state.model_error}")
            return
        info = self.state.model_info
        if info is None:
            result.update("")
            return
        model = self.state.cfg.model
        family = FAMILY_NAMES.get(info.family, info.family)
        lines = [f"✓ {family} · {info.prediction_type} · {info.source_kind} · {info.description}"]
        overrides = [f"{name} set to {value}" for name, value in
                     (("family", model.family), ("prediction type", model.prediction_type)) if value != "auto"]
        if overrides:
            lines.append("detected values overridden below: " + ", ".join(overrides))
        family = self.state.family
        side = family_start(family, getattr(info, "resolution", None))["data.resolution"]
        chosen = self.state.cfg.data.resolution
        if side == chosen and "data.resolution" not in self.state.chosen:
            lines.append(f"training resolution set to {side} px, the size this model was trained at "
                         "(change it in step 5)")
        elif side != chosen:
            lines.append(f"this model was trained at {side} px; training resolution is {chosen} (step 5)")
        lines.extend(self._family_start_text(family))
        result.update("\n".join(lines))

    def _family(self) -> str | None:
        """The family training will use, once the model has been probed (nothing is proposed before)."""
        return None if self.state.model_info is None else self.state.family

    def _family_start_text(self, family: str) -> list[str]:
        """What the wizard set for this family and whose numbers they are; what of the user's it kept."""
        state = self.state
        specific = family_specific(family)
        set_here = [f"{SETTING_NAMES[p]} {_shown(v)}" for p, v in specific.items() if p not in state.chosen]
        kept = [f"{SETTING_NAMES[p]} {_shown(state.get(p))} (the family starts at {_shown(v)})"
                for p, v in specific.items() if p in state.chosen and state.get(p) != v]
        lines = []
        name = FAMILY_NAMES.get(family, family)
        if set_here:
            lines.append(f"set for {name} as {FAMILY_SOURCES[family]} start it: {', '.join(set_here)} "
                         "(steps 4 and 5)")
        if kept:
            lines.append("kept your " + "; ".join(kept))
        return lines

    def _propose_family_start(self) -> None:
        """Give the family's starting settings to every one the user has not chosen themselves.

        The default 512 px is 16x the work of the tiny built-ins' 128 px and too small for SDXL;
        FLUX trains every block layer in bf16 (models.family_defaults says whose numbers)."""
        family = self._family()
        if family is None:
            return
        state = self.state
        native = getattr(state.model_info, "resolution", None)
        for path, value in family_start(family, native).items():
            if path in state.chosen:
                continue
            state.proposed[path] = value
            if state.get(path) != value:
                self._set_setting(path, value)

    def _set_setting(self, path: str, value: Any) -> None:
        fields = self.screen.query(f"#{field_id(path)}")
        if fields:
            fields.first(ConfigField).set_value(value)  # its step is built: the field shows it and reports it
        else:
            self.state.set(path, value)
            self.post_message(ConfigEdited(path))

    # -- choosing -------------------------------------------------------------

    @on(Button.Pressed, "#model-presets Button")
    def _preset(self, event: Button.Pressed) -> None:
        if event.button.id == "model-browse":
            self.action_browse()
            return
        name = "builtin:" + str(event.button.id).removeprefix("preset-")
        self.query_one("#model-base", ConfigField).set_value(name)

    def action_browse(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is not None:
                self.query_one("#model-base", ConfigField).set_value(self.state.show_path(path))

        self.app.push_screen(PathPicker(self.state.project_dir, title="Choose a diffusers folder or a file",
                                        suffixes=(".safetensors", ".ckpt", ".pt", ".bin")), chosen)

    def problems(self) -> list[str]:
        found = super().problems()
        if self.probing:
            found.append("model.base: still being checked; a moment")
        elif self.state.model_error:
            found.append(f"model.base: {self.state.model_error}")
        return found


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)
