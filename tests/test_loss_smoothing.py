"""One smoothed loss: the headless console and the dashboard report the same number for the same run."""

from __future__ import annotations

import io
import math
import re

from rich.console import Console

from loratui.events import StepDone
from loratui.headless import HeadlessConsole
from loratui.loss_smoothing import EMA_BETA, LossSmoother, smoothed_series
from loratui.tui.widgets.loss_history import LossHistory


def _steps(losses: list[float]) -> list[StepDone]:
    return [StepDone(step=i + 1, total_steps=len(losses), epoch=0, loss=v, lr=1e-4, step_time_s=0.1,
                     data_time_s=0.0, compute_time_s=0.1, optimizer_time_s=0.0, samples_per_s=10.0, ram_mb=1.0,
                     time=float(i * 20)) for i, v in enumerate(losses)]


def test_bias_corrected_ema() -> None:
    s = LossSmoother()
    assert math.isnan(s.value)
    assert s.update(0.5) == 0.5  # bias correction: the first value is the loss itself
    raw = EMA_BETA * (1 - EMA_BETA) * 0.5 + (1 - EMA_BETA) * 0.3
    assert math.isclose(s.update(0.3), raw / (1 - EMA_BETA**2))
    assert math.isclose(s.update(float("nan")), raw / (1 - EMA_BETA**2))  # a skipped step changes nothing


def test_headless_and_dashboard_agree() -> None:
    losses = [0.9, 0.4, 0.7, float("nan"), 0.2, 0.35, 0.5, 0.1]
    out = io.StringIO()
    console = HeadlessConsole(Console(file=out, force_terminal=False, width=200))
    history = LossHistory()
    for event in _steps(losses):
        console(event)
        history.add(event.step, event.loss)
    printed = [float(v) for v in re.findall(r"smoothed (\d+\.\d+)", out.getvalue())]
    assert printed, out.getvalue()
    expected = smoothed_series(losses)
    assert math.isclose(printed[-1], expected[-1], abs_tol=5e-5)
    assert math.isclose(history.smoothed, expected[-1])
