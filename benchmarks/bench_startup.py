"""How long the command takes to answer, and to put its first screen up.

Each measurement is a fresh process, as a user gets it:

  --help         ``loratui --help`` from the installed console script (target < 0.3 s)
  start screen   ``loratui`` with no arguments, run headless until Textual's
                 ``Ready`` event (DOM mounted, first frame drawn) (target < 1 s)
  wizard         ``loratui new DIR``, the same until the wizard is the screen on top
  python -c pass the interpreter alone, for scale

The clock starts in this process just before the child is spawned and stops at
the wall-clock time the child prints, so interpreter start-up and every import
count. The app's background import of torch runs as it does for a user.

Run: ``/work/venv/bin/python benchmarks/bench_startup.py``. With ``--importtime``
it also lists the slowest imports behind ``loratui --help``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_TARGET = 0.3
FRAME_TARGET = 1.0


def _child(mode: str, workdir: str) -> None:
    """Run in the spawned process: build the app the way ``loratui`` does and report the first frame."""
    import loratui.cli  # noqa: F401 - its import cost is part of what a user waits for
    from loratui.tui.app import LoratuiApp

    wanted = "WizardScreen" if mode == "new" else None

    class FirstFrame(LoratuiApp):
        # A relative CSS_PATH is read beside the class's own module; point it back at the app's.
        CSS_PATH = str(Path(sys.modules[LoratuiApp.__module__].__file__).parent / str(LoratuiApp.CSS_PATH))

        def on_ready(self) -> None:
            # Textual posts Ready right after it has written the first frame.
            if wanted is None or type(self.screen).__name__ == wanted:
                self._report()
            else:
                self.set_timer(0.005, self.on_ready)

        def _report(self) -> None:
            print(f"FRAME {time.time():.6f} {type(self.screen).__name__} torch={'torch' in sys.modules}", flush=True)
            os._exit(0)  # leave at once: the background torch import must not hold the process open

    project = Path(workdir) / "new_project"
    app = FirstFrame(project if mode == "new" else None, mode="new" if mode == "new" else "start")
    app.run(headless=True, size=(120, 40))


def _spawn(argv: list[str], env: dict[str, str], *, frame: bool) -> tuple[float, str]:
    t0 = time.time()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    t1 = time.time()
    if not frame:
        if out.returncode != 0:
            raise RuntimeError(f"{argv} failed: {out.stderr[-2000:]}")
        return t1 - t0, ""
    for line in out.stdout.splitlines():
        if line.startswith("FRAME "):
            _, stamp, screen = line.split(" ", 2)
            return float(stamp) - t0, screen
    raise RuntimeError(f"{argv} drew no frame (exit {out.returncode}): {out.stderr[-3000:]}")


def importtime_report(env: dict[str, str], top: int = 12) -> str:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "from loratui.cli import main"],
                         env=env, capture_output=True, text=True)
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|", 2)
        rows.append((int(cumulative), int(self_us), name.rstrip()))
    rows.sort(reverse=True)
    lines = [f"{c / 1e3:8.1f} ms cumulative {s / 1e3:7.1f} ms self  {n}" for c, s, n in rows[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="turns of every measurement")
    ap.add_argument("--importtime", action="store_true", help="also list the slowest imports behind --help")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.workdir)
        return 0

    from common import load_average, machine_line, table, verdict

    script = shutil.which("loratui", path=str(Path(sys.executable).parent)) or "loratui"
    tmp = Path(tempfile.mkdtemp(prefix="loratui-startup-"))
    env = dict(os.environ, LORATUI_CONFIG_DIR=str(tmp / "config"), TEXTUAL_ANIMATIONS="none")
    cases = {
        "python -c pass": lambda i: _spawn([sys.executable, "-c", "pass"], env, frame=False)[0],
        "loratui --help": lambda i: _spawn([script, "--help"], env, frame=False)[0],
        "first frame: start screen": lambda i: _frame("start", i),
        "first frame: wizard (loratui new)": lambda i: _frame("new", i),
    }
    screens: dict[str, str] = {}

    def _frame(mode: str, i: int) -> float:
        work = Path(tempfile.mkdtemp(dir=tmp))
        elapsed, screen = _spawn([sys.executable, __file__, "--child", mode, "--workdir", str(work)], env,
                                 frame=True)
        screens[mode] = screen
        return elapsed

    for name, fn in cases.items():  # one untimed turn: the first start pays for cold disk caches
        fn(-1)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(fn(i))
        print(f"  round {i + 1}/{args.rounds} (load {load_average()})", file=sys.stderr, flush=True)

    print(f"\n## bench_startup — {machine_line()}\n")
    print(f"{args.rounds} fresh processes per row, in turns; median [min–max], seconds\n")
    targets = {"loratui --help": HELP_TARGET, "first frame: start screen": FRAME_TARGET,
               "first frame: wizard (loratui new)": FRAME_TARGET}
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        target = targets.get(name)
        rows.append((name, f"{med:.3f} [{min(ts):.3f}–{max(ts):.3f}]", f"< {target}" if target else "",
                     verdict(med, target, higher_is_better=False) if target else ""))
    print(table(("measure", "seconds", "target", "verdict"), rows))
    print(f"\nscreens reached: {screens}")
    if args.importtime:
        print("\nslowest imports behind `from loratui.cli import main` (python -X importtime, one run):\n")
        print(importtime_report(env))
    print(f"\nload average at the end: {load_average()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
