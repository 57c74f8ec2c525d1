"""Step 5, Training: how long, how fast, what gets saved and sampled along the way."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Collapsible, Static

from loratui.tui.wizard.base import ConfigEdited, WizardStep, unlisted
from loratui.tui.wizard.prompts_editor import PromptsEditor

if TYPE_CHECKING:
    from loratui.config import ProjectConfig
    from loratui.data.scan import ScanReport

# Shown under a heading each; the rest of the fields wait under "More settings".
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Size", ("data.resolution", "train.batch_size", "train.grad_accum")),
    ("Length", ("train.max_steps", "train.epochs")),
    ("Learning rate", ("train.learning_rate", "train.text_encoder_lr", "train.lr_scheduler",
                       "train.warmup_steps", "train.optimizer")),
    ("Speed and memory", ("train.precision", "train.gradient_checkpointing", "train.gradient_checkpointing_every",
                          "train.seed")),
    ("Checkpoints", ("save.every_n_steps", "save.keep")),
    ("Samples", ("sample.every_n_steps",)),
)
# Set on the Images and Captions steps.
ELSEWHERE = {"data.images", "data.caption_extension", "data.trigger_word"}
MORE: list[str] = unlisted(("data", "train", "save", "sample", "validation", "advisor", "logging"),
                           ELSEWHERE | {path for _, paths in GROUPS for path in paths})
LABELS = {
    "data.resolution": "resolution", "train.batch_size": "batch size", "train.grad_accum": "grad accumulation",
    "train.max_steps": "max steps", "train.epochs": "epochs", "train.learning_rate": "learning rate",
    "train.text_encoder_lr": "text encoder lr", "train.lr_scheduler": "scheduler",
    "train.warmup_steps": "warmup steps", "train.gradient_checkpointing": "grad checkpointing",
    "train.gradient_checkpointing_every": "… every Nth block",
    "save.every_n_steps": "checkpoint every", "save.keep": "checkpoints kept",
    "sample.every_n_steps": "sample every",
}


def planned_steps(cfg: ProjectConfig, report: ScanReport | None) -> int | None:
    """Optimizer steps of the whole run; None when it depends on a scan not done yet."""
    from loratui.engine.batches import planned_optimizer_steps  # pure Python: no torch behind it

    t = cfg.train
    if t.epochs > 0 and (report is None or not report.usable):
        return None
    if report is not None:
        from loratui.tui.wizard.step_images import apply_validation_split

        apply_validation_split(report, cfg)  # validation.split may have changed since the scan
    per_epoch = report.steps_per_epoch(t.batch_size) if report is not None and report.usable else 0
    return planned_optimizer_steps(per_epoch, epochs=t.epochs, max_steps=t.max_steps, grad_accum=t.grad_accum)


def length_text(cfg: ProjectConfig, report: ScanReport | None) -> str:
    """How long the run is, in the words the user chose (steps or epochs)."""
    t = cfg.train
    total = planned_steps(cfg, report)
    if t.epochs <= 0:
        return f"trains {total} optimizer steps (epochs is 0, so max steps decides)"
    if total is None or report is None:
        return f"trains {t.epochs} epochs; the step count follows once the images are scanned (step 1)"
    return (f"trains {t.epochs} epochs × {report.steps_per_epoch(t.batch_size)} batches ÷ {t.grad_accum} "
            f"accumulation = {total} optimizer steps (max steps is ignored)")


def batch_note(cfg: ProjectConfig, report: ScanReport | None) -> str:
    """What a batch larger than the dataset means, or nothing."""
    images = len(report.usable) if report is not None else 0
    batch = cfg.train.batch_size
    if not images or batch <= images:
        return ""
    steps = report.steps_per_epoch(batch) if report is not None else 0
    what = ("every step sees every image" if steps == 1
            else f"every step sees all the images of one bucket ({steps} steps an epoch)")
    return (f"batch size {batch} is more than the {images} image{'s' if images != 1 else ''}: {what}; "
            "consider fewer steps")


class TrainingStep(WizardStep):
    """The training schedule; rarely changed settings are folded under "More settings"."""

    title = "Training"

    def compose_step(self) -> ComposeResult:
        with VerticalScroll(id="training-form", classes="wizard-form"):
            for heading, paths in GROUPS:
                yield Static(heading, classes="form-heading", markup=False)
                for path in paths:
                    yield self.field(path, label=LABELS.get(path))
                if heading == "Length":
                    yield Static("", id="training-length", classes="live-note", markup=False)
            yield PromptsEditor(self.state.cfg.sample.prompts, id="prompts-editor")
            # Its fields are built on first expand: most people never open it.
            yield Collapsible(title="More settings", collapsed=True, id="training-more")

    def on_built(self) -> None:
        self._show_length()

    def entered(self) -> None:
        self._show_length()

    def config_changed(self, path: str) -> None:
        if path.startswith("train.") or path.startswith("data."):
            self._show_length()
        elif path == "sample.prompts":
            editor = self.query_one("#prompts-editor", PromptsEditor)
            if editor.prompts != self.state.cfg.sample.prompts:
                editor.show(self.state.cfg.sample.prompts)

    def _show_length(self) -> None:
        note = batch_note(self.state.cfg, self.state.report)
        text = length_text(self.state.cfg, self.state.report)
        self.query_one("#training-length", Static).update(f"{text}\n{note}" if note else text)

    @on(Collapsible.Expanded, "#training-more")
    async def _expanded(self, event: Collapsible.Expanded) -> None:
        contents = event.collapsible.query_one(Collapsible.Contents)
        if not contents.children:
            await contents.mount_all([self.field(path, long=path == "save.output_name") for path in MORE])

    @on(PromptsEditor.Changed)
    def _prompts_changed(self, event: PromptsEditor.Changed) -> None:
        event.stop()
        self.state.cfg.sample.prompts = event.prompts
        self.post_message(ConfigEdited("sample.prompts"))
