"""Data time of a first run (cold cache) against a second run over the same project (warm cache).

Each pair starts from a fresh copy of the sample project: run 1 encodes every
image with the VAE and every caption with the text encoder and writes them to
``.cache/``; run 2 trains the same project again and should only read them.
Pairs repeat (cold, warm, cold, warm, ...) so drift lands on both alike.

Measured per run, by timing the engine's own calls (nothing is changed):
  latents  ``prepare_dataset``: encode or load every image's latents
  text     ``TextCache.get_many``: encode or load the captions' embeddings
  data     ``StepDone.data_time_s``: building each step's batch

The target is on the caching work (latents + text). Per-step data time is
shown too but is the same in both runs: after setup, both runs build batches
from latents held in memory, so only the caching differs.

Run: ``/work/venv/bin/python benchmarks/bench_cache.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from common import machine_line, ms, quiet, scratch_project, set_threads, table, verdict

TARGET = 0.10


class Stopwatch:
    """Adds up the time spent inside one function while installed."""

    def __init__(self) -> None:
        self.total = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - t0

        return timed


def one_run(project: Path, steps: int) -> dict[str, float]:
    from loratui.commands import CommandChannel
    from loratui.engine import latent_cache, session
    from loratui.engine.runner import run_training
    from loratui.events import Event, StepDone

    latents, text = Stopwatch(), Stopwatch()
    original_prepare, original_get_many = session.prepare_dataset, latent_cache.TextCache.get_many
    session.prepare_dataset = latents.wrap(original_prepare)
    latent_cache.TextCache.get_many = text.wrap(original_get_many)
    done: list[StepDone] = []

    def emit(event: Event) -> None:
        if isinstance(event, StepDone):
            done.append(event)

    t0 = time.perf_counter()
    try:
        run_training(project, emit=emit, commands=CommandChannel(), max_steps=steps,
                     overrides=["save.every_n_steps=0", "sample.every_n_steps=0"])
    finally:
        session.prepare_dataset, latent_cache.TextCache.get_many = original_prepare, original_get_many
    data = sum(e.data_time_s for e in done)
    return {"latents": latents.total, "text": text.total, "caching": latents.total + text.total, "data": data,
            "step_data_median": statistics.median(e.data_time_s for e in done), "wall": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="cold/warm pairs, each on a fresh project copy")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    quiet()
    from loratui.models.builtin import ensure_builtin

    ensure_builtin("tiny-sd")  # built once per machine; not part of any run's data time
    runs: dict[str, list[dict[str, float]]] = {"first (cold cache)": [], "second (warm cache)": []}
    for i in range(args.pairs):
        project = scratch_project()
        for name in runs:
            runs[name].append(one_run(project, args.steps))
        print(f"  pair {i + 1}/{args.pairs} done", file=sys.stderr, flush=True)

    print(f"\n## bench_cache — {machine_line(threads)}\n")
    print(f"copies of sample_project, {args.steps} steps per run, {args.pairs} pairs; "
          "medians over pairs, ms\n")
    keys = ("latents", "text", "caching", "data", "step_data_median")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    rows = [(name, *(ms(med[name][k]) for k in keys)) for name in runs]
    print(table(("run", "latents (encode or load)", "text (encode or load)", "caching total",
                 f"data_time_s, sum of {args.steps} steps", "data_time_s per step"), rows))
    ratios = [b["caching"] / a["caching"] for a, b in zip(*runs.values())]
    ratio = statistics.median(ratios)
    with_steps = statistics.median((b["caching"] + b["data"]) / (a["caching"] + a["data"])
                                   for a, b in zip(*runs.values()))
    per_step = med["second (warm cache)"]["step_data_median"] / med["first (cold cache)"]["step_data_median"]
    print("\n" + table(("measure", "value", "target", "verdict"), [
        ("second run's caching time / first's", f"{ratio:.1%} (pairs: {', '.join(f'{r:.1%}' for r in ratios)})",
         f"< {TARGET:.0%}", verdict(ratio, TARGET, higher_is_better=False)),
        (f"same, with the {args.steps} steps' data_time_s added", f"{with_steps:.1%}", "", ""),
        ("data_time_s per step, second / first", f"{per_step:.0%}", "",
         "(both read latents from memory)"),
    ]))
    print(f"\nload average at the end: {machine_line(threads).split('load average ')[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
