"""Step 6, Review: the whole config, how long it will take, and Start."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import Button, Static

from loratui.config import CONFIG_NAME, SECTIONS, ProjectConfig, field_specs
from loratui.tui.wizard.base import ConfigEdited, WizardStep
from loratui.tui.wizard.services import Estimate
from loratui.tui.wizard.step_training import planned_steps


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_text(estimate: Estimate) -> str:
    parts = []
    if estimate.seconds_per_step is not None:
        total = estimate.seconds_per_step * estimate.total_steps
        parts.append(f"≈ {estimate.seconds_per_step:.2g} s per step → about {duration(total)} in all")
    if estimate.peak_memory_mb is not None:
        parts.append(f"peak memory ≈ {estimate.peak_memory_mb / 1024:.1f} GB")
    if not parts:
        return estimate.note
    label = "measured" if estimate.measured else "estimate"
    return f"{label}: {' · '.join(parts)}\n({estimate.note})"


# Parameters of the published transformers, in billions: FLUX.1-dev/schnell 12, SD3.5-Large 8, Medium 2.5.
_TRANSFORMER_B = {"flux": (("FLUX.1-dev", 12.0),), "sd3": (("SD3.5-Large", 8.0), ("Medium", 2.5)),
                  "chroma": (("Chroma1-HD", 8.9),), "flux2_klein": (("FLUX.2-klein-9B", 9.0), ("4B", 4.0))}


def memory_note(cfg: ProjectConfig, family: str | None) -> str:
    """What the full-size transformer holds before anything trains, for the card the wizard cannot see."""
    sizes = _TRANSFORMER_B.get(family or "")
    if not sizes or cfg.model.base.startswith("builtin:"):
        return ""
    if cfg.model.base_weights == "float8":
        stored, per_param = "float8 (model.base_weights)", 1
    else:
        stored, per_param = ("fp32", 4) if cfg.train.precision == "no" else (cfg.train.precision, 2)
    held = ", ".join(f"{name} {billions * per_param:.3g} GB" for name, billions in sizes)
    text = f"frozen transformer in {stored}: {held} before anything trains"
    if per_param == 1:
        return text + "; computed in bf16"
    card = 24 if sizes[0][1] >= 12 else 16
    return text + f"; on a {card} GB card set model.base_weights = \"float8\" (step 3): one byte a weight"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def section_listing(cfg: ProjectConfig, section: str) -> Content:
    """One ``[section]`` as it reads in the file; values changed from the default stand out."""
    lines = [Content.styled(f"[{section}]", "bold $accent")]
    for spec in field_specs(section):
        value = getattr(getattr(cfg, section), spec.name)
        if spec.name == "prompts":
            lines.extend(Content(f"prompt {i}: seed {p.seed}, {p.prompt!r}") for i, p in enumerate(value, 1))
            continue
        if spec.name == "concepts":
            lines.extend(Content(f"concept {i}: {c.folder!r} ×{c.repeats}" + (" (regularization)" if c.is_reg else ""))
                         for i, c in enumerate(value, 1))
            continue
        style = "bold" if value != spec.default else "$text-muted"
        lines.append(Content.assemble(f"{spec.name} = ", (_toml_value(value), style)))
    return Content("\n").join(lines)


class ReviewStep(WizardStep):
    """Everything at a glance; Start trains once nothing is invalid."""

    title = "Review"
    first_focus = "#review-start"

    BINDINGS = [
        Binding("ctrl+e", "measure", "Measure a step"),
    ]

    class Estimated(Message):
        def __init__(self, key: Any, estimate: Estimate | None, failure: str = "") -> None:
            super().__init__()
            self.key = key
            self.estimate = estimate
            self.failure = failure

    def __init__(self, state: Any) -> None:
        super().__init__(state)
        self._estimated: Any = None

    def compose_step(self) -> ComposeResult:
        with VerticalScroll(id="review-scroll", classes="wizard-form"):
            yield Static("", id="review-verdict", markup=False)
            yield Static("", id="review-run", markup=False)
            yield Static("", id="review-estimate", markup=False)
            with Horizontal(id="review-actions"):
                yield Button("Start training", id="review-start", variant="success", compact=True,
                             tooltip="ctrl+n")
                yield Button("Measure a step", id="review-measure", compact=True, tooltip="ctrl+e")
                yield Button("Keep these sample prompts", id="review-keep-prompts", compact=True,
                             tooltip="Save the proposed prompts as [[sample.prompts]]")
            yield Static(f"{CONFIG_NAME} · name = {json.dumps(self.state.cfg.name)} · changed values in bold",
                         classes="form-heading", markup=False)
            with Grid(id="review-config"):
                for section in SECTIONS:
                    yield Static(id=f"review-{section}")

    def entered(self) -> None:
        self.refresh_review()
        if self._estimated != self._key():
            self._estimate_now(measure=False)

    def config_changed(self, path: str) -> None:
        if self.display:
            self.refresh_review()

    def refresh_review(self) -> None:
        problems = self.screen.problems()  # type: ignore[attr-defined]
        verdict = self.query_one("#review-verdict", Static)
        verdict.set_class(bool(problems), "-error")
        if problems:
            verdict.update("Start needs these fixed first:\n" + "\n".join(f"  • {p}" for p in problems))
        else:
            verdict.update("Ready. Start (ctrl+n) saves and opens the training dashboard.")
        self.query_one("#review-run", Static).update(self._run_text())
        self.query_one("#review-keep-prompts", Button).display = bool(self._proposed_prompts().prompts)
        for section in SECTIONS:
            self.query_one(f"#review-{section}", Static).update(section_listing(self.state.cfg, section))

    def _run_text(self) -> str:
        cfg, report = self.state.cfg, self.state.report
        total = planned_steps(cfg, report)
        lines = [f"{total} optimizer steps" if total is not None else "steps: unknown until the images are scanned"]
        if report is not None and report.usable:
            lines[0] += (f" · {report.images_per_epoch} images/epoch, {report.steps_per_epoch(cfg.train.batch_size)}"
                         f" batches/epoch at batch size {cfg.train.batch_size}")
        if cfg.save.every_n_steps:
            lines.append(f"checkpoint every {cfg.save.every_n_steps} steps, keeping {cfg.save.keep}")
        if cfg.sample.every_n_steps and cfg.sample.prompts:
            lines.append(f"{len(cfg.sample.prompts)} sample prompt(s) every {cfg.sample.every_n_steps} steps")
        proposed = self._proposed_prompts()
        if proposed.prompts:
            when = f"every {cfg.sample.every_n_steps} steps and on s" if cfg.sample.every_n_steps else "on s"
            lines.append(f"no sample prompts: samples ({when}) will draw "
                         + "; ".join(f"{p.prompt!r} ({src})" for p, src in zip(proposed.prompts, proposed.sources)))
        note = memory_note(cfg, self.state.family)
        if note:
            lines.append(note)
        if report is not None and report.usable and (cfg.validation.split > 0 or cfg.validation.folder):
            from loratui.tui.wizard.step_images import apply_validation_split

            lines.append(apply_validation_split(report, cfg))
        return "\n".join(lines)

    def _proposed_prompts(self) -> Any:
        """The prompts a run without [[sample.prompts]] will draw (none when some are set)."""
        from loratui.data.holdout import plan_holdout
        from loratui.engine.sample_prompts import ProposedPrompts, propose_prompts

        cfg, report = self.state.cfg, self.state.report
        if cfg.sample.prompts or report is None or not report.usable:
            return ProposedPrompts()
        trained = plan_holdout(report.usable, cfg).trained if cfg.validation.split > 0 else report.usable
        return propose_prompts([(r.rel, r.caption) for r in trained], trigger_word=cfg.data.trigger_word,
                               seed=cfg.train.seed)

    @on(Button.Pressed, "#review-keep-prompts")
    def _keep_prompts(self) -> None:
        self.state.cfg.sample.prompts = list(self._proposed_prompts().prompts)
        self.post_message(ConfigEdited("sample.prompts"))
        self.refresh_review()

    # -- estimate -------------------------------------------------------------

    def _key(self) -> Any:
        return (repr(dataclasses.asdict(self.state.cfg)), planned_steps(self.state.cfg, self.state.report))

    def action_measure(self) -> None:
        self._estimate_now(measure=True)

    @on(Button.Pressed, "#review-measure")
    def _measure_pressed(self) -> None:
        self.action_measure()

    @on(Button.Pressed, "#review-start")
    def _start_pressed(self) -> None:
        self.screen.action_start()  # type: ignore[attr-defined]

    def _estimate_now(self, *, measure: bool) -> None:
        total = planned_steps(self.state.cfg, self.state.report)
        family = self.state.family
        what = "measuring one training step (loads the model) …" if measure else "estimating …"
        self.query_one("#review-estimate", Static).update(what)
        self._estimate(self._key(), copy.deepcopy(self.state.cfg), total or 0, family, measure)

    @work(thread=True, exclusive=True, group="estimate", exit_on_error=False)
    def _estimate(self, key: Any, cfg: ProjectConfig, total: int, family: str | None, measure: bool) -> None:
        try:
            estimate = self.state.services.estimate(self.state.project_dir, cfg, total, family, measure=measure)
        except Exception as exc:  # noqa: BLE001 - an estimate is advice; its failure is shown, not raised
            self.post_message(self.Estimated(key, None, f"no estimate: {exc}"))
            return
        self.post_message(self.Estimated(key, estimate))

    def on_review_step_estimated(self, event: Estimated) -> None:
        self._estimated = event.key
        text = event.failure if event.estimate is None else estimate_text(event.estimate)
        self.query_one("#review-estimate", Static).update(text)
