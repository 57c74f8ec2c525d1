"""The numbers of a run: where it is, how fast it goes, what it costs."""

from __future__ import annotations

import math
import time
from typing import Callable

from rich.table import Table
from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

from loratui.tui.widgets.run_state import RunState, format_duration, format_mb


def _num(value: float | None, fmt: str = ".4f") -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    return format(value, fmt)


class StatsPanel(Widget):
    """A two-column table of the run's numbers, redrawn from a :class:`RunState`."""

    COMPONENT_CLASSES = {"stats-panel--label", "stats-panel--warn"}
    DEFAULT_CSS = """
    StatsPanel {
        height: auto;
    }
    StatsPanel > .stats-panel--label {
        color: $text-muted;
    }
    StatsPanel > .stats-panel--warn {
        color: $warning;
        text-style: bold;
    }
    """

    def __init__(self, state: RunState, *, clock: Callable[[], float] = time.time, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.state = state
        self.clock = clock

    def render(self) -> RenderResult:
        s = self.state
        label = self.get_component_rich_style("stats-panel--label")
        warn = self.get_component_rich_style("stats-panel--warn")
        table = Table.grid(padding=(0, 1))
        table.add_column(style=label, no_wrap=True)
        table.add_column(overflow="fold")
        last = s.last
        total = s.total_steps
        epoch = f"  epoch {last.epoch}" if last else ""
        table.add_row("Step", f"{s.step} / {total if total else '?'}{epoch}")
        smoothed = s.history.smoothed
        table.add_row("Loss", f"{_num(s.history.last_loss)}  (smoothed {_num(smoothed)})")
        table.add_row("LR", _num(last.lr, ".2e") if last else "–")
        its, sps = s.iterations_per_s(), s.samples_per_s()
        table.add_row("Speed", f"{_num(its, '.2f')} it/s  {_num(sps, '.2f')} img/s")
        times = s.mean_times()
        if times:
            step_t, data_t, compute_t, opt_t = times
            table.add_row("Per step", f"{_time(step_t)}: data {_time(data_t)} · fwd+bwd {_time(compute_t)} · "
                                      f"optim {_time(opt_t)}")
        else:
            table.add_row("Per step", "–")
        table.add_row("ETA", f"{format_duration(s.eta_s())}  (elapsed {format_duration(self._elapsed())})")
        memory = f"RAM {format_mb(last.ram_mb)}" if last else "RAM –"
        if last and last.gpu_alloc_mb is not None:
            memory += f"  GPU {format_mb(last.gpu_alloc_mb)} (peak {format_mb(last.gpu_peak_mb)})"
        table.add_row("Memory", memory)
        if s.cost_per_hour > 0:
            spent = s.cost_per_hour * (self._elapsed() or 0.0) / 3600
            eta = s.eta_s() if s.running else 0.0
            end = f"  (~${spent + s.cost_per_hour * eta / 3600:,.2f} at the end)" if eta is not None else ""
            table.add_row("Cost", f"${spent:,.2f} so far{end}")
        skipped = last.skipped_steps if last else 0
        table.add_row("Skipped", Text(f"{skipped} non-finite step{'s' if skipped != 1 else ''}",
                                      style=warn if skipped else ""))
        if s.started:
            st = s.started
            table.add_row("Run", f"{st.device} · {st.family} · {st.precision} · {st.num_images} images")
            if st.concepts:
                table.add_row("Concepts", concepts_text(st.concepts))
        return table

    def _elapsed(self) -> float | None:
        start = self.state.started
        if start is None:
            return None
        end = self.state.finished or self.state.failed
        now = end.time if end is not None else self.clock()
        return max(now - start.time, 0.0)


def concepts_text(concepts: tuple | list) -> str:
    """``alice 12 → 120/epoch (50%) · reg (reg) 40 → 120/epoch (50%)``, one entry per concept."""
    parts = []
    for name, kind, images, per_epoch, share in concepts:
        tag = " (reg)" if kind == "reg" else ""
        parts.append(f"{name}{tag} {images} → {per_epoch}/epoch ({share:.0%})")
    return " · ".join(parts)


def _time(seconds: float) -> str:
    """A step's part in the unit that keeps it short: 0.36 ms, 104 ms, 1.2 s."""
    if seconds >= 1:
        return f"{seconds:.2g} s"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.2g} ms"
