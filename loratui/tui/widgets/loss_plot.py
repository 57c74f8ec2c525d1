"""A plot of the smoothed loss over the whole run, drawn with braille dots, with the
validation loss (when the run has held-out images) on the same step axis.

Braille gives 2×4 dots per cell, so an ordinary pane shows a few hundred
points with no image support from the terminal and no plotting library.
"""

from __future__ import annotations

import bisect
import math
from typing import ClassVar, Sequence

from rich.style import StyleType
from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

from loratui.events import ValidationDone
from loratui.tui.widgets.loss_history import LossHistory

# Bit of each dot inside a braille cell, indexed [row][column] (Unicode braille layout).
_DOT_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_BRAILLE_BASE = 0x2800


def _label(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


class LossPlot(Widget):
    """Smoothed (EMA) loss against step, with the y range labelled on the left."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"loss-plot--line", "loss-plot--axis", "loss-plot--validation"}
    """`loss-plot--line` colours the curve; `loss-plot--validation` the validation loss; `loss-plot--axis`
    the labels and the axis."""

    DEFAULT_CSS = """
    LossPlot {
        height: 1fr;
        min-height: 4;
    }
    LossPlot > .loss-plot--line {
        color: $primary;
    }
    LossPlot > .loss-plot--axis {
        color: $text-muted;
    }
    LossPlot > .loss-plot--validation {
        color: $warning;
        text-style: bold;
    }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.history = LossHistory()
        self.total_steps: int | None = None
        self.validations: list[ValidationDone] = []

    def update_history(self, history: LossHistory, total_steps: int | None,
                       validations: Sequence[ValidationDone] = ()) -> None:
        self.history = history
        self.total_steps = total_steps
        self.validations = list(validations)
        self.refresh()

    def render(self) -> RenderResult:
        return plot_text(self.history, self.total_steps, self.size.width, self.size.height,
                         line_style=self.get_component_rich_style("loss-plot--line"),
                         axis_style=self.get_component_rich_style("loss-plot--axis"),
                         validations=self.validations,
                         validation_style=self.get_component_rich_style("loss-plot--validation"))


def plot_text(history: LossHistory, total_steps: int | None, width: int, height: int, *,
              line_style: StyleType = "", axis_style: StyleType = "",
              validations: Sequence[ValidationDone] = (), validation_style: StyleType = "") -> Text:
    """The plot as text: y labels and axis on the left, braille curve, step axis below. Cells holding
    the validation curve are drawn in ``validation_style``."""
    pairs = [(s, v) for s, v in zip(history.steps, history.ema) if math.isfinite(v)]
    steps, values = [p[0] for p in pairs], [p[1] for p in pairs]
    if not steps:
        return Text("smoothed loss appears after the first step", style=axis_style, justify="center")
    val_pairs = sorted((v.step, v.val_loss) for v in validations
                       if math.isfinite(v.val_loss) and v.step >= steps[0])
    val_steps, val_values = [p[0] for p in val_pairs], [p[1] for p in val_pairs]
    low, high = min(values + val_values), max(values + val_values)
    if high - low < 1e-12:
        low, high = low - 0.5 * abs(low or 1) * 0.01, high + 0.5 * abs(high or 1) * 0.01
    pad = (high - low) * 0.05
    low, high = low - pad, high + pad
    labels = [_label(high), _label((high + low) / 2), _label(low)]
    gutter = max(len(s) for s in labels) + 1
    plot_w, plot_h = width - gutter - 1, height - 1
    if plot_w < 4 or plot_h < 1:
        return Text(f"smoothed {values[-1]:.4g}", style=line_style)
    # Spanning the whole run (not just the steps done) shows how far along it is.
    x_end = max(steps[-1], total_steps or 0, *val_steps)
    grid = _dots(steps, values, steps[0], x_end, plot_w, plot_h, low, high)
    val_grid = _dots(val_steps, val_values, steps[0], x_end, plot_w, plot_h, low, high) if val_steps else None
    label_rows = {0: labels[0], plot_h // 2: labels[1], plot_h - 1: labels[2]}
    text = Text(no_wrap=True, overflow="crop")
    for row in range(plot_h):
        text.append(label_rows.get(row, "").rjust(gutter - 1) + " ", axis_style)
        text.append("┤" if row in label_rows else "│", axis_style)
        if val_grid is None:
            text.append("".join(chr(_BRAILLE_BASE + bits) for bits in grid[row]), line_style)
        else:
            for bits, val_bits in zip(grid[row], val_grid[row]):
                text.append(chr(_BRAILLE_BASE + (bits | val_bits)), validation_style if val_bits else line_style)
        text.append("\n")
    left, right = str(steps[0]), f"step {x_end}"
    inner = max(plot_w - len(left) - len(right), 1)
    text.append(" " * gutter + "└" + left + "─" * inner + right, axis_style)
    return text


def _dots(steps: list[int], values: list[float], x0: int, x_end: int, plot_w: int, plot_h: int,
          low: float, high: float) -> list[list[int]]:
    cols, rows = plot_w * 2, plot_h * 4
    grid = [[0] * plot_w for _ in range(plot_h)]
    span = max(x_end - x0, 1)
    previous: int | None = None
    for px in range(cols):
        at = x0 + span * px / max(cols - 1, 1)
        if at < steps[0] - span / max(cols - 1, 1):
            continue  # a series that starts later than the axis (the validation loss)
        if at > steps[-1] + 1e-9:
            break
        value = _interpolate(steps, values, at)
        py = round((high - value) / (high - low) * (rows - 1))
        py = min(max(py, 0), rows - 1)
        # Joining to the previous column keeps steep drops a line instead of scattered dots.
        lo, hi = (py, py) if previous is None else (min(py, previous), max(py, previous))
        for y in range(lo, hi + 1):
            grid[y // 4][px // 2] |= _DOT_BITS[y % 4][px % 2]
        previous = py
    return grid


def _interpolate(steps: list[int], values: list[float], at: float) -> float:
    i = bisect.bisect_left(steps, at)
    if i <= 0:
        return values[0]
    if i >= len(steps):
        return values[-1]
    s0, s1 = steps[i - 1], steps[i]
    t = (at - s0) / (s1 - s0) if s1 != s0 else 0.0
    return values[i - 1] + (values[i] - values[i - 1]) * t
