"""What every benchmark here shares: the machine line, a scratch project, interleaved timing, tables.

Timings on a shared machine drift by tens of percent within a minute, so the
benchmarks never time one variant after another. They run the variants in
turns (A B C A B C ...) and compare medians, so a slow minute lands on every
variant alike; the load average is printed beside every table because it is
the first thing to check when two tables disagree.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
SAMPLE_PROJECT = REPO / "sample_project"
# Outputs of earlier runs must not leak into a benchmark's copy (a warm cache would hide the work).
_RUN_OUTPUTS = ("output", "checkpoints", "samples", "logs", ".cache", ".loratui.lock", "*.py")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_line(threads: int | None = None) -> str:
    """One line that says where and when the numbers were taken."""
    parts = [f"CPU: {cpu_model()}", f"{usable_cores()} cores"]
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        parts.append(f"torch {torch.__version__}")
        parts.append(f"{threads if threads is not None else torch.get_num_threads()} torch threads")
    parts.append(f"Python {platform.python_version()}")
    parts.append(time.strftime("%Y-%m-%d %H:%M %Z"))
    parts.append(f"load average {load_average()}")
    return " · ".join(parts)


def scratch_project(source: Path = SAMPLE_PROJECT, parent: Path | None = None) -> Path:
    """A private copy of a project (config and images only), so a run never touches the original."""
    parent = Path(tempfile.mkdtemp(prefix="loratui-bench-")) if parent is None else parent
    dst = parent / source.name
    shutil.copytree(source, dst, ignore=shutil.ignore_patterns(*_RUN_OUTPUTS))
    return dst


def set_threads(n: int | None) -> int:
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


@dataclass
class Case:
    """One variant in an interleaved comparison: ``step`` runs one unit of work."""

    name: str
    step: Callable[[], None]
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def quartiles(self) -> tuple[float, float]:
        if len(self.times) < 4:
            return min(self.times), max(self.times)
        q = statistics.quantiles(self.times, n=4)
        return q[0], q[2]


def interleave(cases: Sequence[Case], *, rounds: int, per_round: int, warmup: int = 2,
               between: Callable[[], None] | None = None, progress: bool = True) -> None:
    """Warm every case up, then run ``per_round`` timed steps of each in turn, ``rounds`` times."""
    for case in cases:
        for _ in range(warmup):
            case.step()
    for r in range(rounds):
        for case in cases:
            for _ in range(per_round):
                t0 = time.perf_counter()
                case.step()
                case.times.append(time.perf_counter() - t0)
            if between is not None:
                between()
        if progress:
            print(f"  round {r + 1}/{rounds} done (load {load_average()})", file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, so a benchmark's output pastes straight into the README."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    out = [line(list(headers)), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value < target
    return "met" if met else "NOT met"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def quiet() -> None:
    """Library chatter (torchvision advice, dtype notes) would bury the tables."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from loratui.engine.quiet import quiet_libraries

    quiet_libraries()
