"""Which images are held out for validation and never trained on.

The choice is a pure function of the scanned image list and the seed, so the
trainer, ``loratui check`` and the wizard name the same images, and a resumed
run holds out the same ones. It works on whatever list of usable records the
scan produced (one folder, repeat folders, several concepts).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence, TypeVar

from pathlib import Path
from typing import TYPE_CHECKING

from loratui.config import ConfigError, ProjectConfig

if TYPE_CHECKING:
    from loratui.data.scan import ScanReport
    from loratui.project import ProjectPaths

R = TypeVar("R")


def held_out_count(total: int, fraction: float) -> int:
    """How many of ``total`` images a split holds out: at least one when on, never all of them."""
    if fraction <= 0 or total < 2:
        return 0
    return min(total - 1, max(1, math.floor(total * fraction + 0.5)))


def split_records(records: Sequence[R], fraction: float, seed: int) -> tuple[list[R], list[R]]:
    """(trained, held out). Records are chosen by their ``rel`` path, not their position, so the
    same images are held out however the folder was listed."""
    count = held_out_count(len(records), fraction)
    if count == 0:
        return list(records), []
    names = sorted(getattr(r, "rel") for r in records)
    chosen = set(random.Random(f"{seed}:validation-split").sample(names, count))
    trained = [r for r in records if getattr(r, "rel") not in chosen]
    held = sorted((r for r in records if getattr(r, "rel") in chosen), key=lambda r: getattr(r, "rel"))
    return trained, held


@dataclass
class HoldoutPlan:
    """What validation will use, in words the wizard and ``check`` print."""

    source: str  # "split" | "folder" | "off"
    trained: list = field(default_factory=list)
    held_out: list = field(default_factory=list)
    note: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.held_out)


def mark_held_out(report: "ScanReport", plan: HoldoutPlan) -> None:
    """Tell the scan which of its images the plan keeps out of training, so its epoch counts (images and
    steps per epoch, the bucket histogram) are the ones the run will have."""
    trained = {id(r) for r in plan.trained}
    report.held_out = [r for r in report.usable if id(r) not in trained]


def plan_holdout(usable: Sequence[R], cfg: ProjectConfig, folder_records: Sequence[R] | None = None) -> HoldoutPlan:
    """The split for a project: ``usable`` are the scanned training images; ``folder_records`` the usable
    images of ``validation.folder`` when one is set."""
    v = cfg.validation
    if v.folder:
        held = list(folder_records or [])
        note = (f"validation: {len(held)} image(s) from {v.folder}, never trained on"
                if held else f"validation.folder = {v.folder!r} holds no usable images: validation is off")
        return HoldoutPlan("folder", list(usable), held, note)
    if v.split > 0:
        trained, held = split_records(usable, v.split, cfg.train.seed)
        if not held:
            return HoldoutPlan("split", trained, [], f"validation.split = {v.split:g}: too few images to hold "
                                                     "one out (at least 2 are needed): validation is off")
        names = ", ".join(getattr(r, "rel") for r in held[:6]) + (" …" if len(held) > 6 else "")
        note = (f"validation: {len(held)} of {len(usable)} images held out (validation.split = {v.split:g}, "
                f"seed {cfg.train.seed}), never trained on: {names}")
        return HoldoutPlan("split", trained, held, note)
    return HoldoutPlan("off", list(usable), [], "validation: off (set validation.split or validation.folder)")


def project_holdout(paths: ProjectPaths, cfg: ProjectConfig, usable: Sequence[R]) -> HoldoutPlan:
    """The plan for a project on disk: scans ``validation.folder`` when one is set. Images inside that
    folder are never trained on, even when it lies inside the images folder."""
    if not cfg.validation.folder:
        return plan_holdout(usable, cfg)
    from loratui.data.scan import scan_images

    folder = paths.inside(cfg.validation.folder, "validation.folder", must_be_inside=False)
    if not folder.is_dir():
        raise ConfigError(f"validation.folder = {cfg.validation.folder!r}: the folder {folder} does not exist. "
                          "Put held-out images (with captions) there, or clear validation.folder.")
    report = scan_images(folder, resolution=cfg.data.resolution, caption_extension=cfg.data.caption_extension,
                         bucket_step=cfg.data.bucket_step, trigger_word=cfg.data.trigger_word)
    trained = [r for r in usable if not Path(getattr(r, "path")).resolve().is_relative_to(folder)]
    return plan_holdout(trained, cfg, report.usable)
