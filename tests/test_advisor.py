"""Each advisor rule fires on a synthetic series that shows its condition and stays silent on a healthy one."""

from __future__ import annotations

import math
import random

from loratui.advisor import (
    Advisor,
    MetricsSeries,
    RunFacts,
    no_progress,
    over_budget,
    overfitting,
    review,
    slow_data,
    too_high,
)
from loratui.events import Advice, StepDone, ValidationDone

FACTS = RunFacts(total_steps=1000, warmup_steps=20, learning_rate=1e-4, rank=16, alpha=8.0)


def _step(step: int, loss: float, *, step_s: float = 0.5, data_s: float = 0.01, skipped: int = 0) -> StepDone:
    return StepDone(step=step, total_steps=1000, epoch=0, loss=loss, lr=1e-4, step_time_s=step_s,
                    data_time_s=data_s, compute_time_s=step_s - data_s, optimizer_time_s=0.0,
                    samples_per_s=1 / step_s, ram_mb=0.0, skipped_steps=skipped, time=float(step))


def _val(step: int, loss: float) -> ValidationDone:
    return ValidationDone(step=step, val_loss=loss, band_losses={"t0-999": loss}, images=2, eval_time_s=0.1,
                          cost_share=0.01, best_step=step, best_val_loss=loss)


def _noisy(level: float, step: int, rng: random.Random) -> float:
    """Diffusion losses jump with the timestep: ±60% around the level."""
    return level * (0.4 + 1.2 * rng.random())


def healthy(steps: int = 400, evals_every: int = 40) -> MetricsSeries:
    """A loss that falls and settles; the validation loss falls and flattens."""
    rng = random.Random(0)
    series = MetricsSeries()
    for s in range(1, steps + 1):
        series.add(_step(s, _noisy(0.10 + 0.08 * math.exp(-s / 80), s, rng)))
        if s % evals_every == 0:
            series.add(_val(s, 0.12 + 0.06 * math.exp(-s / 100)))
    return series


def test_a_healthy_run_gets_no_notes() -> None:
    assert review(healthy(), FACTS) == []
    assert review(healthy(1000, 50), FACTS) == []


def test_overfitting_names_the_step_and_the_best_checkpoint() -> None:
    rng = random.Random(1)
    series = MetricsSeries()
    for s in range(1, 301):
        series.add(_step(s, _noisy(0.15 * math.exp(-s / 150), s, rng)))  # keeps falling: memorising
        if s % 30 == 0:
            series.add(_val(s, 0.12 - 0.0002 * s if s <= 150 else 0.09 + 0.0003 * (s - 150)))
    note = overfitting(series, FACTS)
    assert note is not None
    assert "overfitting since step 150" in note.text and "best checkpoint is step 150" in note.text
    assert "0.0900" in note.text  # the numbers are in the note
    # Two evaluations above the best are not yet a trend.
    early = MetricsSeries(series.steps[:210], [v for v in series.validations if v.step <= 210])
    assert overfitting(early, FACTS) is None


def test_validation_rising_with_the_training_loss_is_not_called_overfitting() -> None:
    series = MetricsSeries()
    for s in range(1, 301):
        series.add(_step(s, 0.1 + 0.0002 * s))
        if s % 30 == 0:
            series.add(_val(s, 0.1 + 0.0002 * s))
    assert overfitting(series, FACTS) is None


def test_no_progress_after_warm_up_points_at_the_learning_rate() -> None:
    rng = random.Random(2)
    flat = MetricsSeries([_step(s, _noisy(0.12, s, rng)) for s in range(1, 301)],
                         [_val(s, 0.15 + 0.0001 * (s % 3)) for s in range(50, 301, 50)])
    note = no_progress(flat, FACTS)
    assert note is not None and "too low" in note.text and "8/16" in note.text
    assert no_progress(healthy(), FACTS) is None
    short = MetricsSeries(flat.steps[:100], flat.validations[:1])  # too early to say
    assert no_progress(short, FACTS) is None
    # A flat training loss alone is normal for a LoRA: without validation the rule stays silent,
    # and a validation loss that still falls clears it.
    assert no_progress(MetricsSeries(flat.steps), FACTS) is None
    improving = MetricsSeries(flat.steps, [_val(s, 0.2 - 0.0002 * s) for s in range(50, 301, 50)])
    assert no_progress(improving, FACTS) is None


def test_a_jump_after_warm_up_and_non_finite_steps_point_at_a_rate_too_high() -> None:
    rng = random.Random(3)
    jumping = MetricsSeries([_step(s, _noisy(0.1 if s < 150 else 0.3, s, rng)) for s in range(1, 300)])
    note = too_high(jumping, FACTS)
    assert note is not None and "jumped after warm-up" in note.text and "too high" in note.text
    nan_steps = MetricsSeries([_step(s, 0.1 if s != 60 else math.nan, skipped=int(s >= 60))
                               for s in range(1, 100)])
    note = too_high(nan_steps, FACTS)
    assert note is not None and "first at step 60" in note.text
    # Skips during warm-up, and a loss that only falls, are not this rule's business.
    warm = MetricsSeries([_step(s, 0.1, skipped=int(s >= 5)) for s in range(1, 100)])
    assert too_high(warm, FACTS) is None
    assert too_high(healthy(), FACTS) is None


def test_a_slow_data_loader_is_named_with_its_share() -> None:
    slow = MetricsSeries([_step(s, 0.1, step_s=0.2, data_s=0.08) for s in range(1, 41)])
    note = slow_data(slow, FACTS)
    assert note is not None and "40%" in note.text and "80 ms of 200 ms" in note.text
    assert slow_data(healthy(), FACTS) is None


def test_a_run_over_its_time_budget_says_how_many_steps_fit() -> None:
    facts = RunFacts(total_steps=10_000, budget_hours=1.0)
    slow = MetricsSeries([_step(s, 0.1, step_s=0.5) for s in range(1, 31)])  # 10,000 × 0.5 s ≈ 1h 23m
    note = over_budget(slow, facts)
    assert note is not None and "1h 23m" in note.text and "about 7200" in note.text
    assert over_budget(slow, RunFacts(total_steps=5000, budget_hours=1.0)) is None
    assert over_budget(slow, RunFacts(total_steps=10_000)) is None  # no budget set


def test_the_advisor_says_each_note_once_and_not_again_after_a_resume() -> None:
    said: list[Advice] = []
    flat_rng = random.Random(4)
    rows: list = []
    for s in range(1, 301):
        rows.append(_step(s, _noisy(0.12, s, flat_rng)))
        if s % 50 == 0:
            rows.append(_val(s, 0.15))
    advisor = Advisor(FACTS, said.append)
    for row in rows:
        advisor(row)
    assert [a.rule for a in said] == ["no_progress"]
    assert said[0].step % 10 == 0 and said[0].step >= 150  # once the third validation is in
    resumed: list[Advice] = []
    again = Advisor(FACTS, resumed.append, history=list(rows))
    for s in range(301, 320):
        again(_step(s, 0.12))
    assert resumed == []
