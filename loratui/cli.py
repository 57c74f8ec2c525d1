"""The ``loratui`` command. Parsing is cheap; each command imports what it needs
only when it runs, so ``loratui --help`` answers without loading torch."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from loratui.errors import UserError

EXIT_USER_ERROR = 2


class UsageError(UserError):
    pass

COMMANDS = ("new", "open", "train", "sample", "export", "check", "inspect", "convert", "bench",
            "attach", "status", "stop", "pause", "resume", "logs", "import", "caption", "plan")
RUN_COMMANDS = ("status", "stop", "pause", "resume", "logs")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loratui",
        description="Train Stable Diffusion LoRAs from the terminal. With no command, opens the start screen; "
                    "`loratui DIR` opens a project.",
        epilog="Quick start: loratui train sample_project --headless --max-steps 60")
    p.add_argument("--theme", help="colour theme for the TUI (dark, light, high-contrast)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("new", help="create a project folder and open the wizard")
    s.add_argument("dir", type=Path)
    s = sub.add_parser("open", help="open a project in the dashboard")
    s.add_argument("dir", type=Path)

    s = sub.add_parser("train", help="train a project (in the dashboard, or --headless on the console)")
    s.add_argument("dir", type=Path)
    s.add_argument("--headless", action="store_true", help="no TUI: progress on the console")
    s.add_argument("--detach", action="store_true",
                   help="train in the background (survives logging out) and return at once; attach later")
    s.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    s.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value for this run (repeatable)")

    s = sub.add_parser("attach", help="open the dashboard on a running training of this project")
    s.add_argument("dir", type=Path)
    s = sub.add_parser("status", help="one line per run: state, step, loss, speed, ETA, cost")
    s.add_argument("dirs", type=Path, nargs="*", metavar="DIR",
                   help="projects (default: every run of this user on this machine)")
    s.add_argument("--json", action="store_true", help="a JSON list, one object per run")
    s = sub.add_parser("stop", help="stop a running training properly (checkpoint and LoRA saved)")
    s.add_argument("dir", type=Path)
    s.add_argument("--wait", action="store_true", help="return once the run has saved and ended")
    s = sub.add_parser("pause", help="pause a running training (the model stays loaded)")
    s.add_argument("dir", type=Path)
    s = sub.add_parser("resume", help="continue a paused training")
    s.add_argument("dir", type=Path)
    s = sub.add_parser("logs", help="the run's progress as lines; -f follows it")
    s.add_argument("dir", type=Path)
    s.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")

    s = sub.add_parser("sample", help="make one image with the base model and optionally a LoRA")
    s.add_argument("dir", type=Path, help="project folder (its base model and resolution are used)")
    s.add_argument("--prompt", required=True)
    s.add_argument("--negative", default="")
    s.add_argument("--lora", type=Path, help="LoRA file (default: the project's output file if it exists)")
    s.add_argument("--no-lora", action="store_true", help="the base model alone")
    s.add_argument("--scale", type=float, default=1.0, help="LoRA strength (0 = base model)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--steps", type=int, default=0)
    s.add_argument("--guidance", type=float, default=0.0)
    s.add_argument("--out", type=Path, required=True, help="PNG file to write")

    s = sub.add_parser("export", help="write the LoRA from the newest checkpoint (kohya or diffusers format), "
                                      "or with --merge a base model with the LoRA merged in")
    s.add_argument("dir", type=Path)
    s.add_argument("--format", choices=("kohya", "diffusers"), default=None)
    s.add_argument("--out", type=Path, help="file to write (default: output/NAME[-diffusers].safetensors); "
                                            "with --merge, the folder to write into (default: output/)")
    s.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: the newest)")
    s.add_argument("--best", action="store_true",
                   help="the checkpoint with the lowest validation loss (validation.* and save.keep_best), "
                        "written to output/NAME-best.safetensors")
    s.add_argument("--merge", action="store_true",
                   help="write the base model with the LoRA merged in: output/NAME-merged/ (diffusers folder) "
                        "and output/NAME-merged.safetensors (one checkpoint for A1111/Forge/ComfyUI)")
    s.add_argument("--scale", type=float, default=1.0, help="with --merge: LoRA strength merged in (0 = base model)")
    s.add_argument("--lora", type=Path, help="with --merge: merge this LoRA file instead of the newest checkpoint")
    s.add_argument("--ema", action="store_true", help="write the checkpoint's EMA of the weights "
                                                      "(train.ema_decay) as output/NAME-ema.safetensors")
    s.add_argument("--card", nargs="?", type=Path, const=True, default=None, metavar="FOLDER",
                   help="also write a publishable folder (default output/NAME-card/): the LoRA, NAME.preview.png, "
                        "the newest samples and a Hugging Face model card (README.md)")
    s.add_argument("--push", metavar="REPO", help="upload the card folder to this Hub model repository "
                                                 "(OWNER/NAME; needs `hf auth login` and the hub extra)")
    s.add_argument("--private", action="store_true", help="with --push: create the repository private")

    s = sub.add_parser("check", help="scan the project's images and print every problem "
                                     "(one line per problem when piped)")
    s.add_argument("dir", type=Path)
    s.add_argument("--json", action="store_true", help="print the summary and one object per file as JSON")

    s = sub.add_parser("inspect", help="describe a LoRA file: family, rank, alpha, modules, metadata")
    s.add_argument("file", type=Path)
    s.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    s = sub.add_parser("convert", help="convert a LoRA file between kohya and diffusers formats")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.add_argument("--to", choices=("kohya", "diffusers"), required=True)
    s.add_argument("--family", choices=("sd1", "sd2", "sdxl"), help="when the file does not say")

    s = sub.add_parser("bench", help="time a few steps of this project on this machine and project the run")
    s.add_argument("dir", type=Path)
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--json", action="store_true", help="print the result as one JSON object")

    s = sub.add_parser("plan", help="estimate the run's peak GPU memory for every memory option (base precision, "
                                    "checkpointing, offload, block swap) and propose the fastest that fits")
    s.add_argument("dir", type=Path)
    s.add_argument("--gpu-memory", type=float, metavar="GB",
                   help="the card's memory in GB (default: the CUDA device's, when there is one)")
    s.add_argument("--json", action="store_true", help="print the plan as one JSON object")

    s = sub.add_parser("import", help="write a project's loratui.toml from a kohya sd-scripts config (or the "
                                      "kohya_ss GUI's JSON) and dataset TOML")
    s.add_argument("dir", type=Path, help="project folder to write loratui.toml into")
    s.add_argument("--kohya", type=Path, help="sd-scripts argument file (--config_file TOML) or kohya_ss GUI .json")
    s.add_argument("--dataset", type=Path, help="sd-scripts dataset config (--dataset_config TOML)")
    s.add_argument("--force", action="store_true", help="replace an existing loratui.toml (kept as .bak)")

    from loratui.captioning.command import add_parser as add_caption_parser

    add_caption_parser(sub)
    return p


def _no_world_writable_files() -> None:
    # Checkpoints, samples and the LoRA are written by several libraries with the process umask;
    # masking "others may write" here covers them all, whatever the shell's umask is.
    old = os.umask(0)
    os.umask(old | 0o002)


def main(argv: Sequence[str] | None = None) -> int:
    _no_world_writable_files()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `loratui DIR` is short for `loratui open DIR`.
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        argv = ["open", *argv]
    args = _parser().parse_args(argv)
    if args.version:
        from loratui import __version__

        print(f"loratui {__version__}")
        return 0
    try:
        return _dispatch(args)
    except Exception as exc:  # noqa: BLE001 - user errors become one paragraph, bugs keep their traceback
        message = _user_error(exc)
        if message is None:
            raise
        print(f"loratui: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def _user_error(exc: BaseException) -> str | None:
    """The message of a mistake the user can fix; None for a bug, which keeps its traceback."""
    return str(exc) if isinstance(exc, (UserError, FileNotFoundError)) else None


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "train" and args.detach:
        if args.headless:
            raise UsageError("--detach and --headless do not go together: a detached run is already headless.")
        from loratui.run.shell import cmd_detach

        return cmd_detach(args)
    if cmd in RUN_COMMANDS:
        from loratui.run import shell

        return getattr(shell, f"cmd_{cmd}")(args)
    if cmd == "train" and args.headless:
        from loratui.headless import run_headless

        return run_headless(args.dir, resume=args.resume, overrides=args.overrides, max_steps=args.max_steps)
    if cmd == "caption":
        from loratui.captioning.command import cmd_caption

        return cmd_caption(args)
    if cmd in (None, "new", "open", "train", "attach"):
        return _run_tui(args)
    from loratui import cli_tools

    return getattr(cli_tools, f"cmd_{cmd}")(args)


def _run_tui(args: argparse.Namespace) -> int:
    from loratui.tui import graphics
    from loratui.tui.app import LoratuiApp

    # Asked before the app exists: the terminal can only answer while nothing else reads
    # stdin, and Textual takes NO_COLOR out of the environment.
    graphics.detect()
    if sys.stdout.isatty():
        # Exported COLUMNS/LINES win over the tty in Python's size lookup, which Textual uses on
        # every resize: the screen would keep their size and never follow the window.
        for name in ("COLUMNS", "LINES"):
            os.environ.pop(name, None)
    cmd = args.command
    if cmd == "attach":
        from loratui.run.client import RunClient

        RunClient.connect(args.dir).close()  # no live run: say so on the shell, not in a screen
        app = LoratuiApp(args.dir, mode="open", theme=args.theme)
    elif cmd is None:
        app = LoratuiApp(None, mode="start", theme=args.theme)
    elif cmd == "new":
        app = LoratuiApp(args.dir, mode="new", theme=args.theme)
    else:
        kwargs = {}
        if cmd == "train":
            kwargs = {"autostart": True, "resume": args.resume, "max_steps": args.max_steps,
                      "overrides": args.overrides}
        app = LoratuiApp(args.dir, mode="open", theme=args.theme, **kwargs)
    result = app.run()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
