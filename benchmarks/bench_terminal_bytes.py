"""Bytes the dashboard writes to its terminal while training, with two samples on screen.

``loratui train PROJECT`` runs in a pseudo-terminal of 160×48 cells (10×20 px each, set in
the window size the kernel keeps, as xterm does). The project has two sample images on
disk, so the gallery shows them, and makes no new ones while the run lasts. Once steps are
being written to ``logs/metrics.jsonl`` (training has started), everything the dashboard
writes during the next ``--seconds`` is counted, for each image method:

  sixel      LORATUI_IMAGES=sixel (what xterm -ti vt340 and foot get)
  halfblock  LORATUI_IMAGES=halfblock, true colour (what a tmux without sixel gets)
  kitty      LORATUI_IMAGES=kitty (kitty 0.28+): textual-image sends each picture as a PNG
             and places it once (``a=p``); the cells then hold Unicode placeholders

Reported: bytes per second over the window, the pictures sent in the window and before it
(start-up: sixel images, or kitty placements), and the bytes written before the window. Target: < 10 KB/s for
both, text included. Nothing answers the terminal queries here, so detection falls back
as in a terminal that answers nothing (the methods are forced).

Run: ``python benchmarks/bench_terminal_bytes.py`` (``--code DIR`` measures another
checkout of loratui, e.g. an older commit unpacked with ``git archive``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import sys
import termios
import time
from pathlib import Path

from common import machine_line, scratch_project, table, verdict

ROOT = Path(__file__).resolve().parents[1]
COLS, ROWS, CELL_W, CELL_H = 160, 48, 10, 20
TARGET_BYTES_S = 10_000
PICTURE_START = re.compile(rb"\x1bP[0-9;]*q|\x1b_Ga=p,")
"""A sixel image, or a kitty placement (one per picture textual-image transmits)."""


def add_samples(project: Path) -> None:
    """Two 512×512 samples at step 0, with their prompts, made from the project's own images."""
    from PIL import Image

    sources = sorted((project / "images").rglob("*.png"))[:2]
    folder = project / "samples" / "step-000000"
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate(sources):
        with Image.open(source) as img:
            img.convert("RGB").resize((512, 512), Image.Resampling.BICUBIC).save(folder / f"sample-{i}.png")
        (folder / f"sample-{i}.txt").write_text(f"prompt: zxc toy, sample {i}\nseed: {i}\n", encoding="utf-8")


def stop_run_service(project: Path) -> None:
    """End the run the dashboard started: it trains in a session of its own (``.loratui/run.json``
    names its process), which outlives the dashboard, and the next method needs the project free."""
    record = project / ".loratui" / "run.json"
    try:
        service = int(json.loads(record.read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError):
        return  # an older loratui whose run lived in the dashboard's own process group
    for sig, wait_s in ((signal.SIGTERM, 60.0), (signal.SIGKILL, 10.0)):
        try:
            os.kill(service, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.kill(service, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def measure(project: Path, method: str, seconds: float, code: Path, python: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "TMUX", "LORATUI_REFRESH"))}
    env.update(TERM="xterm-256color", COLORTERM="truecolor", LORATUI_IMAGES=method, PYTHONPATH=str(code),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", LORATUI_CONFIG_DIR=str(project.parent / "settings"))
    env.pop("NO_COLOR", None)
    metrics = project / "logs" / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(project.parent)
        os.execvpe(python, [python, "-m", "loratui", "train", project.name, "--max-steps", "100000",
                            "--set", "save.every_n_steps=0", "--set", "sample.every_n_steps=0"], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, COLS * CELL_W, ROWS * CELL_H))
    before, window = bytearray(), bytearray()
    window_start: float | None = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if window_start is None and metrics.exists() and len(metrics.read_bytes().splitlines()) >= 3:
                window_start = time.monotonic()
                deadline = window_start + seconds
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                (before if window_start is None else window).extend(chunk)
        if window_start is None:
            raise SystemExit(f"{method}: training never started; the screen ended with:\n{before[-2000:]!r}")
    finally:
        try:
            os.killpg(pid, signal.SIGTERM)  # the app and the engine's child: their own session
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)
        stop_run_service(project)
    elapsed = time.monotonic() - window_start
    return {"bytes_s": len(window) / elapsed, "pictures": len(PICTURE_START.findall(window)),
            "startup_pictures": len(PICTURE_START.findall(before)), "startup_kb": len(before) / 1000,
            "steps": len(metrics.read_bytes().splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--methods", default="sixel,halfblock,kitty")
    parser.add_argument("--code", type=Path, default=ROOT, help="the loratui checkout to run (default: this one)")
    args = parser.parse_args()
    project = scratch_project()
    add_samples(project)
    rows = []
    try:
        for method in args.methods.split(","):
            r = measure(project, method, args.seconds, args.code.resolve(), sys.executable)
            rows.append([method, f"{r['bytes_s'] / 1000:.1f} KB/s", verdict(TARGET_BYTES_S / max(r["bytes_s"], 1), 1.0),
                         r["pictures"], r["startup_pictures"], f"{r['startup_kb']:.0f} KB", r["steps"]])
    finally:
        shutil.rmtree(project.parent, ignore_errors=True)
    print(machine_line())
    print(f"{COLS}×{ROWS} cells, two samples on screen, {args.seconds:g} s of training ({args.code})\n")
    print(table(["method", "written", "< 10 KB/s", "pictures sent (window)", "pictures sent (start-up)",
                 "start-up bytes", "steps done"], rows))


if __name__ == "__main__":
    main()
