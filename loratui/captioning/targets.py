"""Which images a caption command works on, and where each one's caption lives.

A project folder (with loratui.toml) means its training images, every concept folder
included, with the project's trigger word and caption extension; any other folder is
taken as a folder of images. Hidden files and folders (the backups among them) are
never read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loratui.data.captions import find_caption, read_caption
from loratui.data.images import IMAGE_EXTENSIONS
from loratui.errors import UserError


@dataclass
class CaptionJob:
    image: Path
    rel: str  # relative to its folder, for messages
    group: str  # the sub-folder, as ss_tag_frequency groups captions ("images" for the top)
    caption: Path  # the existing caption file, or where a new one goes
    text: str | None  # the caption now; None when there is no caption file
    trigger: str  # this image's trigger word ("" for regularization images)

    @property
    def captioned(self) -> bool:
        return bool(self.text)


@dataclass
class CaptionTarget:
    base: Path  # the project (or image folder): backups go in base/.caption-backup
    jobs: list[CaptionJob]
    is_project: bool
    notes: list[str]


def _images_in(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        # Folder symlinks are not followed, as the scan does; hidden entries are skipped.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d)))
        found.extend(Path(root) / f for f in sorted(files)
                     if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return found


def _jobs(folder: Path, extension: str, trigger: str, notes: list[str]) -> list[CaptionJob]:
    jobs = []
    for image in _images_in(folder):
        rel = image.relative_to(folder).as_posix()
        group = str(Path(rel).parent)
        found = find_caption(image, extension)
        text = None
        if found.exists:
            try:
                text = read_caption(found.path).text
            except OSError as exc:
                notes.append(f"{rel}: caption {found.path.name} cannot be read ({exc.strerror or exc}); "
                             "left alone")
                continue
        jobs.append(CaptionJob(image, rel, group if group != "." else "images", found.path, text, trigger))
    return jobs


def caption_target(directory: Path, *, trigger: str | None = None, extension: str | None = None) -> CaptionTarget:
    """The images under ``directory`` (a project or a plain folder) with their captions."""
    from loratui.config import CONFIG_NAME, load_config
    from loratui.data.concepts import resolve_concepts

    directory = Path(directory).expanduser().absolute()
    if not directory.is_dir():
        raise UserError(f"{directory}: no such folder. Give a project folder or a folder of images.")
    notes: list[str] = []
    if (directory / CONFIG_NAME).is_file():
        cfg = load_config(directory)
        jobs: list[CaptionJob] = []
        for c in resolve_concepts(cfg, directory):
            if not c.folder.is_dir():
                notes.append(f"{c.setting}: {c.folder} does not exist; skipped")
                continue
            word = c.trigger_word if trigger is None or c.is_reg else trigger
            jobs += _jobs(c.folder, extension or c.caption_extension, word, notes)
        target = CaptionTarget(directory, jobs, True, notes)
    else:
        target = CaptionTarget(directory, _jobs(directory, extension or ".txt", trigger or "", notes), False, notes)
    if not target.jobs:
        raise UserError(f"no images under {directory} (looked for {', '.join(IMAGE_EXTENSIONS)}).")
    return target
