"""The captioning loop: images in, a whole caption file out per image, progress reported.

Each caption is written atomically after its old text went into the backup, so an
interruption of any kind (Ctrl+C, a full disk, a crash) leaves every caption either as it
was or as newly written, and running the same command again carries on: captioned images
are skipped unless --overwrite or --append is given.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loratui.captioning.backup import CaptionBackup
from loratui.captioning.base import Captioner, CaptionerError
from loratui.captioning.targets import CaptionJob
from loratui.data.captions import has_trigger, split_tags

MODES = ("skip", "overwrite", "append")


@dataclass
class Progress:
    done: int  # images handled so far (written, failed or empty)
    total: int
    seconds_per_image: float | None  # measured; None before the first batch is back
    last: str  # the image just handled

    @property
    def eta_seconds(self) -> float | None:
        if self.seconds_per_image is None:
            return None
        return self.seconds_per_image * (self.total - self.done)


@dataclass
class Outcome:
    total: int = 0  # images to caption in this run
    skipped: int = 0  # already captioned, left alone
    written: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "rel: why"
    empty: list[str] = field(default_factory=list)  # the model answered nothing
    stopped: str = ""  # why the run ended early, "" when it did not
    seconds: float = 0.0

    @property
    def left(self) -> int:
        return self.total - len(self.written) - len(self.failed) - len(self.empty)


def with_trigger(text: str, trigger: str) -> str:
    trigger = trigger.strip()
    if not trigger or has_trigger(text, trigger):
        return text
    return f"{trigger}, {text}" if text else trigger


def merge_tags(old: str, new: str) -> str:
    """``old`` followed by the tags of ``new`` it does not have yet."""
    have = {t.casefold() for t in split_tags(old)}
    extra = [t for t in split_tags(new) if t.casefold() not in have]
    return ", ".join(filter(None, [old.strip().strip(","), *extra]))


def compose(job: CaptionJob, generated: str, mode: str) -> str:
    text = merge_tags(job.text or "", generated) if mode == "append" and job.text else generated
    return with_trigger(text, job.trigger)


def to_caption(jobs: list[CaptionJob], mode: str) -> tuple[list[CaptionJob], int]:
    """(the jobs this mode captions, how many it leaves alone because they have a caption)."""
    if mode not in MODES:
        raise ValueError(mode)
    if mode != "skip":
        return list(jobs), 0
    todo = [j for j in jobs if not j.captioned]
    return todo, len(jobs) - len(todo)


class CaptionRun:
    """Captions ``jobs`` in batches. ``outcome`` is kept up to date, so a caller that catches
    KeyboardInterrupt still knows exactly what was written."""

    def __init__(self, captioner: Captioner, backup: CaptionBackup, *, mode: str = "skip",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.captioner = captioner
        self.backup = backup
        self.mode = mode
        self.clock = clock
        self.outcome = Outcome()

    def run(self, jobs: list[CaptionJob], *, progress: Callable[[Progress], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> Outcome:
        from loratui.data.images import ImageProblem, load_image

        todo, skipped = to_caption(jobs, self.mode)
        out = self.outcome
        out.total, out.skipped = len(todo), skipped
        start = self.clock()
        size = max(1, self.captioner.batch_size)
        done = 0
        for first in range(0, len(todo), size):
            if should_stop():
                out.stopped = "stopped on request"
                break
            batch, images = [], []
            for job in todo[first:first + size]:
                try:
                    images.append(load_image(job.image).image)
                    batch.append(job)
                except ImageProblem as exc:
                    out.failed.append(f"{job.rel}: {exc.reason}")
                    done += 1
            try:
                captions = self.captioner.caption(images) if images else []
            except CaptionerError as exc:  # e.g. out of GPU memory: what was written stays, the rest waits
                out.stopped = str(exc)
                break
            for job, generated in zip(batch, captions):
                done += 1
                if not generated.strip():
                    out.empty.append(job.rel)
                    continue
                text = compose(job, generated, self.mode)
                try:
                    self.backup.write(job.caption, text)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        out.stopped = f"the disk is full (writing {job.caption.name})"
                        out.seconds = self.clock() - start
                        return out
                    out.failed.append(f"{job.rel}: cannot write {job.caption.name} ({exc.strerror or exc})")
                    continue
                job.text = text
                out.written.append(job.rel)
            elapsed = self.clock() - start
            out.seconds = elapsed
            if progress is not None:
                last = todo[min(done, len(todo)) - 1].rel if done else ""
                progress(Progress(done, len(todo), elapsed / done if done else None, last))
        out.seconds = self.clock() - start
        return out


def resume_hint(mode: str, directory: str) -> str:
    if mode == "skip":
        return f"run `loratui caption {directory}` again to caption the rest: captioned images are skipped"
    return (f"the images not reached keep their captions; `loratui caption {directory} --{mode}` again redoes "
            f"them all, and `loratui caption {directory} --restore` puts back what this run replaced")
