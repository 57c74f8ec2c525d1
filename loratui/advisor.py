"""The advisor: rules that read the loss curves and say what they see and what to try.

Each rule is a small pure function of the run's metrics (the rows of
``metrics.jsonl``) and a few facts from the config; it returns a :class:`Note`
or None. :class:`Advisor` is an event sink that keeps the series, runs the
rules as steps and validations arrive and emits each new note once as an
:class:`~loratui.events.Advice` event (events pane, headless console,
``logs/train.log``). The thresholds and where they come from are listed in the
README ("The advisor").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import fmean
from typing import Callable

from loratui.events import Advice, Event, Started, StepDone, ValidationDone
from loratui.loss_smoothing import smoothed_series

RISING_EVALS = 3
"""Evaluations in a row above the lowest before overfitting is called: one or two can be a bump of the run."""
MIN_RISE = 0.02
"""...each at least this much above it (the validation loss has no sampling noise of its own; a plateau
wobbles by under 1% on the sample project)."""
PROGRESS_MIN_DROP = 0.02
"""A run whose mean loss fell by less than this after warm-up has not learned (the sample project drops ~20%)."""
TRAIN_TOLERANCE = 0.03
"""For overfitting the training loss must not have risen by more than this (its smoothed value still wobbles
by a few percent: ±3% on flat stretches of the sample project). Both rising is a rate too high, not memorising."""
PROGRESS_MIN_EVALS = 3
"""Validations after warm-up needed before no progress is called (it needs validation.split or .folder)."""
PROGRESS_MIN_STEPS = 100
"""Steps after warm-up before no progress is called: the first hundred are where a LoRA moves most."""
JUMP_FACTOR = 1.5
"""The smoothed loss this many times its lowest value after warm-up is a jump, not noise (EMA over ~50 steps)."""
JUMP_MIN_STEPS = 20
DATA_SHARE = 0.25
"""Data loading above this share of a step: with cached latents it is ~1% on a GPU."""
WINDOW = 20
"""Recent steps averaged for speed and the data share (the dashboard's it/s window)."""


@dataclass(frozen=True)
class RunFacts:
    """What the rules need from the config."""

    total_steps: int
    warmup_steps: int = 0
    learning_rate: float = 1e-4
    rank: int = 16
    alpha: float = 16.0
    budget_hours: float = 0.0


@dataclass
class MetricsSeries:
    steps: list[StepDone] = field(default_factory=list)
    validations: list[ValidationDone] = field(default_factory=list)

    def add(self, event: Event) -> None:
        if isinstance(event, StepDone):
            self.steps.append(event)
        elif isinstance(event, ValidationDone):
            self.validations.append(event)


@dataclass(frozen=True)
class Note:
    rule: str
    key: str
    """The same rule with the same key is said once; a new key (a new best step) is news."""
    text: str


Rule = Callable[[MetricsSeries, RunFacts], "Note | None"]


def _smoothed_at(series: MetricsSeries, step: int) -> float | None:
    rows = [r for r in series.steps if r.step <= step]
    if not rows:
        return None
    return smoothed_series(r.loss for r in rows)[-1]


def overfitting(series: MetricsSeries, facts: RunFacts) -> Note | None:
    """Validation loss above its lowest for RISING_EVALS evaluations while the training loss falls or holds."""
    vals = series.validations
    if len(vals) < RISING_EVALS + 1:
        return None
    best = min(vals, key=lambda v: v.val_loss)
    tail = vals[-RISING_EVALS:]
    if tail[0].step <= best.step:
        return None
    last = tail[-1]
    # Every one of them clearly above the lowest: a plateau's wobble stays within MIN_RISE of it.
    if not all(v.val_loss >= best.val_loss * (1 + MIN_RISE) for v in tail):
        return None
    train_then, train_now = _smoothed_at(series, best.step), _smoothed_at(series, last.step)
    if train_then is None or train_now is None or train_now > train_then * (1 + TRAIN_TOLERANCE):
        return None
    text = (f"overfitting since step {best.step}: the validation loss has stayed above its lowest for "
            f"{RISING_EVALS} evaluations "
            f"(lowest {best.val_loss:.4f} at step {best.step}, now {last.val_loss:.4f} at step {last.step}, "
            f"{last.val_loss / best.val_loss - 1:+.1%}) while the training loss did not rise (smoothed {train_then:.4f} → "
            f"{train_now:.4f}). The best checkpoint is step {best.step} (`loratui export DIR --best`). Try about "
            f"{best.step} steps, more images, or a lower lora.rank (now {facts.rank}).")
    return Note("overfitting", str(best.step), text)


def no_progress(series: MetricsSeries, facts: RunFacts) -> Note | None:
    """The loss has not come down after warm-up: the learning rate is probably too low."""
    after = [r for r in series.steps if r.step > facts.warmup_steps and math.isfinite(r.loss)]
    if len(after) < PROGRESS_MIN_STEPS:
        return None
    window = max(WINDOW, len(after) // 10)
    first, last = after[:window], after[-window:]
    before, now = fmean(r.loss for r in first), fmean(r.loss for r in last)
    drop = (before - now) / before if before > 0 else 0.0
    if drop >= PROGRESS_MIN_DROP:
        return None
    # A LoRA's training loss often barely moves while it learns well: only the fixed-noise validation
    # loss standing still too is evidence enough to blame the rate.
    vals = [v for v in series.validations if v.step > facts.warmup_steps]
    if len(vals) < PROGRESS_MIN_EVALS:
        return None
    if min(v.val_loss for v in vals[1:]) < vals[0].val_loss * (1 - PROGRESS_MIN_DROP / 2):
        return None  # the held-out loss is still improving: the training loss is just noisy
    scale = facts.alpha / facts.rank if facts.rank else 0.0
    best = min(vals[1:], key=lambda v: v.val_loss)
    text = (f"no progress after warm-up: the mean loss was {before:.4f} over steps {first[0].step}–{first[-1].step} "
            f"and is {now:.4f} over steps {last[0].step}–{last[-1].step} ({-drop:+.1%}), and the validation loss "
            f"is no lower ({vals[0].val_loss:.4f} at step {vals[0].step}, best since {best.val_loss:.4f}). "
            "The learning rate is "
            f"probably too low for this rank/alpha (train.learning_rate {facts.learning_rate:g}, lora.alpha/rank "
            f"= {facts.alpha:g}/{facts.rank} = {scale:.3g}): try about 3× the rate, or a higher lora.alpha.")
    return Note("no_progress", "1", text)


def too_high(series: MetricsSeries, facts: RunFacts) -> Note | None:
    """Non-finite steps, or the smoothed loss jumping, after warm-up: the learning rate is probably too high."""
    after = [r for r in series.steps if r.step > facts.warmup_steps]
    if not after:
        return None
    before_skipped = next((r.skipped_steps for r in reversed(series.steps) if r.step <= facts.warmup_steps), 0)
    bad = after[-1].skipped_steps - before_skipped
    advice = (f"The learning rate is probably too high (train.learning_rate {facts.learning_rate:g}): try a third "
              f"of it, or more train.warmup_steps (now {facts.warmup_steps}).")
    if bad > 0:
        first_bad = next(r.step for r in after if r.skipped_steps > before_skipped)
        return Note("too_high", f"nonfinite-{first_bad}",
                    f"{bad} step(s) after warm-up had a NaN/inf loss or gradient (first at step {first_bad}) and "
                    f"were skipped. {advice}")
    if len(after) < JUMP_MIN_STEPS:
        return None
    smooth = smoothed_series(r.loss for r in after)
    # The first few values of a bias-corrected EMA are single raw losses: too noisy to be the baseline.
    low_at = min(range(JUMP_MIN_STEPS // 2, len(smooth)),
                 key=lambda i: smooth[i] if math.isfinite(smooth[i]) else math.inf)
    low, now = smooth[low_at], smooth[-1]
    if not (low > 0 and now > low * JUMP_FACTOR):
        return None
    return Note("too_high", f"jump-{after[low_at].step}",
                f"the loss jumped after warm-up: smoothed {low:.4f} at step {after[low_at].step}, {now:.4f} at step "
                f"{after[-1].step} (×{now / low:.1f}). {advice}")


def slow_data(series: MetricsSeries, facts: RunFacts) -> Note | None:
    """The data loader takes a large share of each step."""
    recent = series.steps[-WINDOW:]
    if len(recent) < WINDOW:
        return None
    step_s = sum(r.step_time_s for r in recent)
    data_s = sum(r.data_time_s for r in recent)
    if step_s <= 0 or data_s / step_s <= DATA_SHARE:
        return None
    n = len(recent)
    return Note("slow_data", "1",
                f"the data loader takes {data_s / step_s:.0%} of each step (data {data_s / n * 1000:.0f} ms of "
                f"{step_s / n * 1000:.0f} ms, last {n} steps): the GPU waits for it. Keep data.cache_latents on, "
                "put the project on a local disk, and turn off data.shuffle_tags/caption_dropout if text encoding "
                "is not cached.")


def over_budget(series: MetricsSeries, facts: RunFacts) -> Note | None:
    """The projected run time exceeds advisor.budget_hours."""
    if facts.budget_hours <= 0 or len(series.steps) < WINDOW // 2:
        return None
    recent = series.steps[-WINDOW:]
    per_step = fmean(r.step_time_s for r in recent)
    done = sum(r.step_time_s for r in series.steps)
    remaining = max(facts.total_steps - series.steps[-1].step, 0)
    projected = done + remaining * per_step
    budget = facts.budget_hours * 3600
    if projected <= budget:
        return None
    fits = max(1, int(budget / per_step)) if per_step > 0 else facts.total_steps
    return Note("over_budget", "1",
                f"at {per_step:.2f} s a step the run needs about {_hours(projected)} in all, over the "
                f"{facts.budget_hours:g} h budget (advisor.budget_hours): lower train.max_steps to about {fits} to "
                "fit, or make steps cheaper (lower data.resolution or train.batch_size).")


def _hours(seconds: float) -> str:
    h, rest = divmod(int(seconds), 3600)
    return f"{h}h {rest // 60:02d}m"


STEP_RULES: tuple[Rule, ...] = (too_high, slow_data, over_budget, no_progress)
VALIDATION_RULES: tuple[Rule, ...] = (overfitting,)
CHECK_EVERY = 10
"""Step rules run every this many steps: they read windows, so checking each step adds nothing."""


def review(series: MetricsSeries, facts: RunFacts, rules: tuple[Rule, ...] = STEP_RULES + VALIDATION_RULES) -> list[Note]:
    return [note for rule in rules if (note := rule(series, facts)) is not None]


class Advisor:
    """An event sink: keeps the series, runs the rules, emits each new note once."""

    def __init__(self, facts: RunFacts, emit: Callable[[Event], None], history: list[Event] | None = None) -> None:
        self.facts = facts
        self.emit = emit
        self.series = MetricsSeries()
        self.said: set[tuple[str, str]] = set()
        for event in history or []:
            self.series.add(event)
        # What an earlier part of a resumed run would have said is not news now.
        self.said.update((n.rule, n.key) for n in review(self.series, facts))

    def __call__(self, event: Event) -> None:
        if isinstance(event, Started):
            self.facts = RunFacts(**{**self.facts.__dict__, "total_steps": event.total_steps})
            return
        if not isinstance(event, (StepDone, ValidationDone)):
            return
        self.series.add(event)
        if isinstance(event, ValidationDone):
            notes = review(self.series, self.facts, VALIDATION_RULES)
        elif event.step % CHECK_EVERY == 0:
            notes = review(self.series, self.facts, STEP_RULES)
        else:
            return
        for note in notes:
            if (note.rule, note.key) not in self.said:
                self.said.add((note.rule, note.key))
                self.emit(Advice(rule=note.rule, text=note.text, step=event.step))


def facts_from_config(cfg, total_steps: int) -> RunFacts:  # cfg: loratui.config.ProjectConfig
    return RunFacts(total_steps=total_steps, warmup_steps=cfg.train.warmup_steps,
                    learning_rate=cfg.train.learning_rate, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                    budget_hours=cfg.advisor.budget_hours)


def read_history(path) -> list[Event]:  # path: logs/metrics.jsonl
    """The step and validation rows of a metrics file (a resumed run's past), torn lines skipped."""
    import json

    from loratui.events import event_from_dict

    events: list[Event] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return events
    for line in lines:
        try:
            data = json.loads(line)
            if data.get("event") in ("step", "validation"):
                events.append(event_from_dict(data))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return events
