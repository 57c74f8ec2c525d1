"""The engine on its own against the same engine driving the live dashboard.

Both arms run ``run_training`` on the same project (latent and text caches
warm, checkpoints and samples off) for the same number of steps:

  headless   the engine in this process's main thread, events to a recorder only
             (what ``loratui train --headless`` does)
  dashboard  ``LoratuiApp`` (mode "open") under ``App.run_test`` (Textual's headless
             driver: every frame is composed, nothing reaches a terminal) with the
             real engine: a child process whose events the dashboard's thread
             worker reads from a pipe and posts to the screen, which applies every
             one and repaints at most every DRAW_INTERVAL_S
  thread     the same dashboard with the engine in its thread worker, in this
             process: how it was built before, kept to show what the child saves

Throughput is taken from the engine's own StepDone timestamps: steps per
second between the first counted step and the last, times the batch. Arms
alternate (H D T H D T ...) so drift lands on all. Target: dashboard /
headless ≥ 0.97.

Run: ``/work/venv/bin/python benchmarks/bench_dashboard.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from common import load_average, machine_line, quiet, scratch_project, set_threads, table, verdict

TARGET = 0.97
SKIPPED = 3  # first steps left out: allocator and cache warm-up


class Recorder:
    """Keeps the engine's StepDone events and says when the run is over."""

    def __init__(self, steps: int, child: bool = False) -> None:
        self.steps = steps
        self.child = child  # run the engine in a child process, as the dashboard does
        self.done_times: list[float] = []
        self.batch = 0
        self.finished = threading.Event()
        self.error: BaseException | None = None
        # Called from the engine's thread at the first and last counted steps and when the run is over.
        self.on_counted: Callable[[], None] | None = None
        self.on_last: Callable[[], None] | None = None
        self.on_finished: Callable[[], None] | None = None

    def engine(self, project_dir: Path, *, emit: Any, commands: Any, resume: bool = False,
               overrides: Sequence[str] = (), max_steps: int | None = None) -> None:
        """Has the signature of loratui.tui.app.default_engine; runs a fixed-length run."""
        from loratui.engine.child import run_in_child
        from loratui.engine.runner import run_training
        from loratui.events import Event, StepDone

        def tap(event: Event) -> None:
            if isinstance(event, StepDone):
                self.done_times.append(event.time)
                self.batch = round(event.samples_per_s * event.step_time_s)
                if len(self.done_times) == SKIPPED + 1 and self.on_counted is not None:
                    self.on_counted()
                if len(self.done_times) == self.steps and self.on_last is not None:
                    self.on_last()
            emit(event)

        run = run_in_child if self.child else run_training
        try:
            run(project_dir, emit=tap, commands=commands, resume=False, max_steps=self.steps,
                overrides=["save.every_n_steps=0", "sample.every_n_steps=0", *overrides])
        except BaseException as exc:  # noqa: BLE001 - reported by the benchmark, then raised there
            self.error = exc
            raise
        finally:
            self.finished.set()
            if self.on_finished is not None:
                self.on_finished()

    def samples_per_s(self) -> float:
        t = self.done_times[SKIPPED:]
        if len(t) < 2:
            raise RuntimeError(f"only {len(self.done_times)} steps were recorded")
        return (len(t) - 1) * self.batch / (t[-1] - t[0])


def clean_outputs(project: Path) -> None:
    """Forget the last run (but not the cache), so the dashboard offers no resume."""
    for name in ("checkpoints", "output", "samples", "logs"):
        shutil.rmtree(project / name, ignore_errors=True)


def run_headless(project: Path, steps: int) -> float:
    from loratui.commands import CommandChannel

    rec = Recorder(steps)
    rec.engine(project, emit=lambda event: None, commands=CommandChannel())
    return rec.samples_per_s()


def run_dashboard(project: Path, steps: int, settings: Path, *, child: bool = True) -> tuple[float, float]:
    """samples/s, and the share of the run's wall time the UI thread spent on the CPU."""
    from loratui.tui.app import LoratuiApp

    rec = Recorder(steps, child=child)
    params = inspect.signature(LoratuiApp.__init__).parameters
    kwargs: dict[str, Any] = {"engine": rec.engine, "settings_path": settings}
    autostart = "autostart" in params
    if autostart:
        kwargs["autostart"] = True
    app = LoratuiApp(project, mode="open", **kwargs)
    ui: dict[str, float] = {}

    async def drive() -> None:
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()

        def mark(key: str) -> None:  # runs in the UI thread, so thread_time is the UI thread's
            ui[f"cpu_{key}"], ui[f"wall_{key}"] = time.thread_time(), time.perf_counter()

        # Woken by the engine's thread rather than by polling, so this driver adds no work of its own.
        rec.on_counted = lambda: loop.call_soon_threadsafe(mark, "start")
        rec.on_last = lambda: loop.call_soon_threadsafe(mark, "end")
        rec.on_finished = lambda: loop.call_soon_threadsafe(finished.set)
        async with app.run_test(size=(120, 40)) as pilot:
            if not autostart:
                await pilot.pause()
                await pilot.press("t")  # the dashboard's Train key
            await finished.wait()
            await pilot.pause(0.2)  # let the last events land before the app closes

    asyncio.run(drive())
    if rec.error is not None:
        raise RuntimeError(f"the dashboard's run failed: {rec.error!r}") from rec.error
    return rec.samples_per_s(), (ui["cpu_end"] - ui["cpu_start"]) / (ui["wall_end"] - ui["wall_start"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="turns of headless + dashboard")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the child process's torch threads
    quiet()
    project = scratch_project()
    settings = Path(tempfile.mkdtemp(prefix="loratui-bench-settings-")) / "settings.toml"
    run_headless(project, SKIPPED + 2)  # fills the caches; not counted
    from loratui.tui import dashboard

    arms = {
        "headless": lambda: (run_headless(project, args.steps), None),
        f"dashboard, engine in a child process (as built; repaint every ≥ {dashboard.DRAW_INTERVAL_S:g} s)":
            lambda: run_dashboard(project, args.steps, settings),
        "dashboard, engine in the UI's process (thread worker, as before)":
            lambda: run_dashboard(project, args.steps, settings, child=False),
    }
    results: dict[str, list[float]] = {name: [] for name in arms}
    ui_share: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(args.rounds):
        for name, run in arms.items():
            clean_outputs(project)
            rate, share = run()
            results[name].append(rate)
            if share is not None:
                ui_share[name].append(share)
        print(f"  round {r + 1}/{args.rounds} (load {load_average()})", file=sys.stderr, flush=True)

    print(f"\n## bench_dashboard — {machine_line(threads)}\n")
    print(f"copy of sample_project, {args.steps} steps per run (first {SKIPPED} not counted), "
          f"{args.rounds} runs per arm in turns; samples/s from the engine's StepDone times; UI CPU is the "
          "UI thread's CPU time over those steps' wall time\n")
    head = results["headless"]
    rows = []
    for name, v in results.items():
        ratios = [x / h for x, h in zip(v, head)]
        share = f"{statistics.median(ui_share[name]):.0%}" if ui_share[name] else ""
        rows.append((name, f"{statistics.median(v):.2f}", f"{statistics.median(ratios):.3f}", share,
                     ", ".join(f"{x:.2f}" for x in v)))
    print(table(("arm", "samples/s (median)", "÷ headless (median of rounds)", "UI CPU", "each run"), rows))
    built = [x / h for x, h in zip(list(results.values())[1], head)]
    ratio = statistics.median(built)
    print("\n" + table(("measure", "value", "target", "verdict"), [
        ("dashboard / headless, as built", f"{ratio:.3f} (rounds: {', '.join(f'{x:.3f}' for x in built)})",
         f"≥ {TARGET}", verdict(ratio, TARGET)),
    ]))
    print(f"\nload average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
