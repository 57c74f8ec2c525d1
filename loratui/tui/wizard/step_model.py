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

from loratui.tui.wizard.base import ConfigEdited, WizardStep, unlisted
from loratui.tui.wizard.dir_picker import PathPicker
from loratui.tui.wizard.fields import ConfigField

BUILTINS = ("builtin:tiny-sd", "builtin:tiny-sd2", "builtin:tiny-sdxl")
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD 3.x", "flux": "FLUX.1"}
NATIVE_SIDE = {"sd1": 512, "sd2": 512, "sdxl": 1024, "sd3": 1024, "flux": 1024}
# What the peers start a LoRA on these transformers with, shown once the family is known.
FAMILY_ADVICE = {
    "flux": "FLUX: 1024 px, learning rate 1e-4, preset all (sd-scripts' default), bf16 with gradient "
            "checkpointing; FLUX-dev needs about 24 GB for its bf16 weights alone",
    "sd3": "SD3: 1024 px, learning rate 1e-4, preset attention+ff, bf16 with gradient checkpointing",
}
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
            yield Label("built-in models", classes="row-label")
            for name in BUILTINS:
                yield Button(name.removeprefix("builtin:"), id=f"preset-{name[8:]}", compact=True, classes="-small")
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
        elif path in ("model.family", "model.prediction_type"):
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
        self._propose_resolution(getattr(event.info, "resolution", None))
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
        side = getattr(info, "resolution", None) or NATIVE_SIDE.get(info.family)
        chosen = self.state.cfg.data.resolution
        if side and side == chosen and self.state.proposed_resolution == side:
            lines.append(f"training resolution set to {side} px, the size this model was trained at "
                         "(change it in step 5)")
        elif side and side != chosen:
            lines.append(f"this model was trained at {side} px; training resolution is {chosen} (step 5)")
        if info.family in FAMILY_ADVICE:
            lines.append(FAMILY_ADVICE[info.family])
        result.update("\n".join(lines))

    def _propose_resolution(self, side: int | None) -> None:
        """Train at the model's own size, unless the user already chose a resolution.

        The default 512 px is 16x the work of the tiny built-ins' 128 px and too small for SDXL."""
        state = self.state
        if not side or not state.resolution_untouched or state.cfg.data.resolution == side:
            state.proposed_resolution = side if state.resolution_untouched else None
            return
        state.proposed_resolution = side
        fields = self.screen.query("#data-resolution")
        if fields:
            fields.first(ConfigField).set_value(side)
        else:
            state.set("data.resolution", side)
            self.post_message(ConfigEdited("data.resolution"))

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
