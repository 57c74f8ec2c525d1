"""``loratui caption DIR``: caption the images, or with a tool flag edit the captions in bulk,
or --restore undo the newest change."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING

from loratui.captioning.base import BACKUP_DIR, CaptionOptions
from loratui.errors import UserError

if TYPE_CHECKING:
    from loratui.captioning.backup import CaptionBackup
    from loratui.captioning.targets import CaptionTarget

EXIT_INTERRUPTED = 130


class _LazyConsole:
    """rich is loaded when something is printed, not when `loratui --help` builds the parser."""

    _console = None

    def __getattr__(self, name: str):  # noqa: ANN204
        if _LazyConsole._console is None:
            from rich.console import Console

            _LazyConsole._console = Console(highlight=False, soft_wrap=True)
        return getattr(_LazyConsole._console, name)


console = _LazyConsole()


def add_parser(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    s = sub.add_parser("caption", help="write a caption beside each image with a vision-language model or a "
                                       "booru tagger; or edit captions in bulk; or --restore the last change")
    s.add_argument("dir", type=Path, help="project folder (its images, trigger word and caption extension) "
                                          "or a folder of images")
    s.add_argument("--model", default="vlm",
                   help="a folder, an .onnx tagger, a hub id, or 'vlm' (Qwen/Qwen2.5-VL-3B-Instruct) / "
                        "'tags' (SmilingWolf/wd-eva02-large-tagger-v3); default vlm")
    s.add_argument("--prompt", default="", help="what the vision-language model is asked (Florence-2: a task "
                                                "token such as <DETAILED_CAPTION>)")
    s.add_argument("--max-length", type=int, default=160, help="most new tokens per caption (default 160)")
    s.add_argument("--general-threshold", type=float, default=0.35, help="tagger: lower gives more tags (0.35)")
    s.add_argument("--character-threshold", type=float, default=0.85, help="tagger: character tags (0.85)")
    s.add_argument("--blacklist", default="", help="tags never written: 'a, b' or a file with one per line")
    s.add_argument("--keep-underscores", action="store_true", help="tagger: keep long_hair, not long hair")
    s.add_argument("--trigger", default=None, help="trigger word put in front (default: data.trigger_word)")
    s.add_argument("--extension", default=None, help="caption extension (default: data.caption_extension, or .txt)")
    s.add_argument("--batch-size", type=int, default=0, help="images per batch (default: 8-16 on a GPU, 1 on CPU)")
    s.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="caption images that have a caption too "
                                                              "(the old ones go to the backup)")
    mode.add_argument("--append", action="store_true", help="add the new tags to existing captions")
    tools = s.add_argument_group("caption tools (no model is run)")
    tools.add_argument("--restore", action="store_true",
                       help=f"undo the newest caption run or tool change (from {BACKUP_DIR}/)")
    tools.add_argument("--frequency", action="store_true", help="print how often each tag occurs")
    tools.add_argument("--top", type=int, default=40, help="with --frequency: how many tags to list (default 40)")
    tools.add_argument("--replace", nargs=2, metavar=("FIND", "REPLACE"), help="replace text in every caption")
    tools.add_argument("--remove-tags", metavar="TAGS", help="remove tags matching 'a, b*' (or a file of them)")
    tools.add_argument("--add-trigger", action="store_true", help="put the trigger word in front of each caption")
    tools.add_argument("--remove-trigger", action="store_true", help="take the trigger word tag out of each caption")


def _tag_list(value: str) -> list[str]:
    from loratui.captioning.tools import parse_tag_list

    path = Path(value).expanduser()
    if value and path.is_file():
        try:
            return parse_tag_list(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read the tag list ({exc}).") from exc
    return parse_tag_list(value)


def _options(args: argparse.Namespace) -> CaptionOptions:
    if args.max_length < 1:
        raise UserError(f"--max-length {args.max_length}: give at least 1 token.")
    for flag, value in (("--general-threshold", args.general_threshold),
                        ("--character-threshold", args.character_threshold)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} {value}: a threshold is a probability between 0 and 1.")
    return CaptionOptions(prompt=args.prompt, max_length=args.max_length, general_threshold=args.general_threshold,
                          character_threshold=args.character_threshold, blacklist=_tag_list(args.blacklist),
                          underscores_to_spaces=not args.keep_underscores, batch_size=max(0, args.batch_size),
                          device=args.device)


def cmd_caption(args: argparse.Namespace) -> int:
    from loratui.captioning.backup import restore_latest
    from loratui.captioning.targets import caption_target

    if args.restore:
        result = restore_latest(Path(args.dir).expanduser().absolute())
        console.print(f"restored {result.restored} caption(s) and removed {result.removed} written by "
                      f"{result.what or 'the run'} ({result.folder.name})")
        for path in result.kept:
            console.print(f"  kept {path}: edited after that run")
        return 0
    target = caption_target(args.dir, trigger=args.trigger, extension=args.extension)
    for note in target.notes:
        console.print(f"note: {note}")
    if args.frequency:
        return _print_frequency(target, args.top)
    if args.replace or args.remove_tags or args.add_trigger or args.remove_trigger:
        return _run_tools(args, target)
    return _run_captioner(args, target)


def _print_frequency(target: CaptionTarget, top: int) -> int:
    from loratui.captioning.tools import frequency_by_group, frequency_total

    total = frequency_total(target.jobs)
    captioned = sum(1 for j in target.jobs if j.text)
    console.print(f"{len(total)} distinct tags in {captioned} captions ({len(target.jobs)} images)")
    for tag, count in list(total.items())[:max(1, top)]:
        console.print(f"{count:6d}  {tag}", markup=False)
    groups = frequency_by_group(target.jobs)
    if len(groups) > 1:
        console.print("per folder (as in the LoRA file's ss_tag_frequency): " +
                      ", ".join(f"{g} {len(t)} tags" for g, t in groups.items()))
    return 0


def _run_tools(args: argparse.Namespace, target: CaptionTarget) -> int:
    from loratui.captioning import tools
    from loratui.captioning.backup import CaptionBackup

    steps = []
    if args.replace:
        find, replace = args.replace
        steps.append((f"replace {find!r} with {replace!r}", lambda j: tools.replace_text(j.text, find, replace)))
    if args.remove_tags:
        patterns = _tag_list(args.remove_tags)
        steps.append((f"remove tags {', '.join(patterns)}", lambda j: tools.remove_tags(j.text, patterns)))
    if args.remove_trigger:
        steps.append(("remove the trigger word", lambda j: tools.remove_trigger(j.text, j.trigger)))
    if args.add_trigger:
        if not any(j.trigger for j in target.jobs):
            raise UserError("--add-trigger: no trigger word; set data.trigger_word or pass --trigger WORD.")
        steps.append(("add the trigger word", lambda j: tools.add_trigger(j.text, j.trigger)))
    backup = CaptionBackup(target.base, "; ".join(name for name, _ in steps))
    changed: set[str] = set()
    failures: list[str] = []
    for _, change in steps:
        result = tools.apply_to_captions(target.jobs, change, backup)
        changed |= set(result.changed)
        failures += result.failures
    missing = sum(1 for j in target.jobs if j.text is None)
    line = f"changed {len(changed)} caption file(s)"
    if missing:
        line += f"; {missing} image(s) without a caption left alone"
    console.print(line)
    if changed:
        console.print(f"the old captions are in {backup.folder}; `loratui caption {args.dir} --restore` "
                      "puts them back")
    for failure in failures:
        console.print(f"error: {failure}", markup=False)
    return 1 if failures else 0


def _run_captioner(args: argparse.Namespace, target: CaptionTarget) -> int:
    from loratui.captioning.backup import CaptionBackup
    from loratui.captioning.loading import open_captioner, resolve_name
    from loratui.captioning.run import CaptionRun, resume_hint, to_caption

    mode = "overwrite" if args.overwrite else "append" if args.append else "skip"
    todo, skipped = to_caption(target.jobs, mode)
    if not todo:
        console.print(f"all {skipped} images already have a caption; nothing to do "
                      "(--overwrite replaces them, --append adds tags)")
        return 0
    name = resolve_name(args.model)
    console.print(f"loading {name} …")
    started = time.monotonic()
    options = _options(args)
    try:
        captioner = open_captioner(args.model, options)
    except KeyboardInterrupt:
        console.print("interrupted while loading the model; no caption was written.")
        return EXIT_INTERRUPTED
    console.print(f"{name} ({captioner.kind}) on {captioner.device} in {time.monotonic() - started:.1f} s; "
                  f"captioning {len(todo)} image(s), batch {captioner.batch_size}"
                  + (f", {skipped} already captioned skipped" if skipped else ""))
    if captioner.device == "cpu" and captioner.kind == "text":
        console.print("no GPU: a vision-language model on the CPU takes seconds to minutes per image; "
                      "the time left is shown once the first one is measured")
    backup = CaptionBackup(target.base, f"caption --model {name} ({mode})")
    run = CaptionRun(captioner, backup, mode=mode)
    try:
        with _progress_reporter(len(todo)) as report:
            run.run(target.jobs, progress=report)
    except KeyboardInterrupt:
        run.outcome.stopped = "interrupted (Ctrl+C)"
    finally:
        captioner.close()
    return _summary(run.outcome, backup, resume_hint(mode, str(args.dir)))


def _summary(out, backup: CaptionBackup, hint: str) -> int:  # noqa: ANN001
    rate = f" ({out.seconds / max(1, len(out.written)):.2f} s per image)" if out.written else ""
    console.print(f"wrote {len(out.written)} caption(s) in {out.seconds:.1f} s{rate}"
                  + (f"; {out.skipped} already captioned, skipped" if out.skipped else ""))
    for failure in out.failed:
        console.print(f"skipped {failure}", markup=False)
    if out.empty:
        console.print(f"the model wrote nothing for {len(out.empty)} image(s) (first: {out.empty[0]}); "
                      "they stay uncaptioned", markup=False)
    if backup.folder is not None:
        console.print(f"the run is recorded in {backup.folder} (with any caption it replaced); "
                      f"`loratui caption DIR --restore` undoes it")
    if out.stopped:
        console.print(f"stopped: {out.stopped}. {len(out.written)} caption(s) were written whole, "
                      f"{out.left} image(s) were not reached; {hint}.", markup=False)
        return EXIT_INTERRUPTED if "Ctrl+C" in out.stopped else 1
    return 1 if out.failed else 0


class _progress_reporter:  # noqa: N801 - used as a context manager, named like one
    """A progress bar on a terminal; on a pipe, a plain line every few seconds."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar = None
        self._last_line = 0.0

    def __enter__(self):  # noqa: ANN204
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("captioning"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console)
            self.bar.start()
            self.task = self.bar.add_task("captioning", total=self.total, rate="")
        return self.report

    def report(self, p) -> None:  # noqa: ANN001
        rate = f"{p.seconds_per_image:.2f} s/image" if p.seconds_per_image else ""
        if self.bar is not None:
            self.bar.update(self.task, completed=p.done, rate=rate)
            return
        now = time.monotonic()
        if now - self._last_line >= 5 or p.done == p.total:
            self._last_line = now
            eta = p.eta_seconds
            left = f", about {eta:.0f} s left" if eta is not None and p.done < p.total else ""
            print(f"captioned {p.done}/{p.total} ({rate}{left})", flush=True)

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        if self.bar is not None:
            self.bar.stop()
