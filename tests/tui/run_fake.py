"""Run the real app against the fake engine, to look at it as a user would (e.g. inside tmux).

    python tests/tui/run_fake.py [PROJECT_DIR] [--steps N] [--delay S] [--fail-at N] [--theme NAME]

A new temporary project is made when no folder is given; settings go to a temporary folder
unless LORATUI_CONFIG_DIR is set, so your own recent projects stay untouched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from loratui.project import create_project  # noqa: E402
from loratui.tui.app import LoratuiApp  # noqa: E402
from tests.tui.fake_engine import EPOCH, FakeEngine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project", nargs="?", type=Path)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--fail-at", type=int)
    parser.add_argument("--sample-every", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--theme")
    parser.add_argument("--screen", choices=("start", "open"), default="open")
    args = parser.parse_args()
    os.environ.setdefault("LORATUI_CONFIG_DIR", tempfile.mkdtemp(prefix="loratui-settings-"))
    project = args.project or Path(tempfile.mkdtemp(prefix="loratui-fake-")) / "demo_lora"
    create_project(project)
    engine = FakeEngine(args.steps, fail_at=args.fail_at, sample_every=args.sample_every,
                        checkpoint_every=args.checkpoint_every, step_delay=args.delay,
                        prompts=("a photo of sks dog on a beach", "sks dog, oil painting"))
    # The fake engine stamps events from a fixed epoch; a clock running from there keeps "elapsed" sane.
    t0 = time.time()
    app = LoratuiApp(project if args.screen == "open" else None, mode=args.screen, engine=engine,
                     theme=args.theme, clock=lambda: EPOCH + time.time() - t0,
                     warmup=lambda: "ready (fake engine, no torch)")
    app.run()


if __name__ == "__main__":
    main()
