"""Concepts: several image folders, each with its own repeats, caption settings and loss weight, one
scanned list for the whole run.

``data.images`` is the one-concept shorthand: it scans exactly as before (``N_name`` sub-folders
repeat, paths shown relative to the folder). With ``[[data.concepts]]`` every folder is scanned on
its own and the records are joined, each knowing its concept; a record's ``rel`` then starts with
the concept's name so that paths stay unique across folders.

Regularization concepts (``is_reg``) are balanced against the training images the way kohya
sd-scripts does it (see ``balance_regularization``), so a kohya user's epoch has the same length here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loratui.data.scan import Progress, ScanReport, scan_images

if TYPE_CHECKING:
    from loratui.config import ProjectConfig


@dataclass(frozen=True)
class Concept:
    """A concept with every inherited setting filled in from [data]."""

    index: int
    name: str
    folder: Path  # absolute
    setting: str  # where it came from, for messages: "data.images" or "data.concepts[i]"
    repeats: int = 1
    is_reg: bool = False
    loss_weight: float = 1.0
    class_tokens: str = ""
    trigger_word: str = ""
    caption_extension: str = ".txt"
    shuffle_tags: bool = False
    keep_tokens: int = 1
    caption_dropout: float = 0.0
    alpha_mask: bool = False
    masks: Path | None = None

    def sample_weight(self, prior_loss_weight: float) -> float:
        """The factor on each of this concept's per-image losses (kohya: prior_loss_weight for reg images)."""
        return self.loss_weight * (prior_loss_weight if self.is_reg else 1.0)


def _inside(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else root / path).absolute()


def resolve_concepts(cfg: ProjectConfig, root: Path) -> list[Concept]:
    """The run's concepts; the shorthand ``data.images`` is one concept of repeats 1."""
    d = cfg.data
    masks = _inside(root, d.masks) if d.masks else None
    if not d.concepts:
        folder = _inside(root, d.images)
        return [Concept(0, folder.name or "images", folder, "data.images", trigger_word=d.trigger_word,
                        caption_extension=d.caption_extension, shuffle_tags=d.shuffle_tags,
                        keep_tokens=d.keep_tokens, caption_dropout=d.caption_dropout, alpha_mask=d.alpha_mask,
                        masks=masks)]
    out = []
    for i, c in enumerate(d.concepts):
        folder = _inside(root, c.folder)
        concept_masks = masks if c.masks is None else (_inside(root, c.masks) if c.masks else None)

        def pick(value, default):  # noqa: ANN001, ANN202 - None means "as in [data]"
            return default if value is None else value

        out.append(Concept(
            index=i, name=c.name or folder.name, folder=folder, setting=f"data.concepts[{i}]",
            repeats=c.repeats, is_reg=c.is_reg, loss_weight=c.loss_weight, class_tokens=c.class_tokens,
            # The trigger word names what is learned; regularization images show the class without it.
            trigger_word=pick(c.trigger_word, "" if c.is_reg else d.trigger_word),
            caption_extension=pick(c.caption_extension, d.caption_extension),
            shuffle_tags=pick(c.shuffle_tags, d.shuffle_tags), keep_tokens=pick(c.keep_tokens, d.keep_tokens),
            caption_dropout=pick(c.caption_dropout, d.caption_dropout),
            alpha_mask=pick(c.alpha_mask, d.alpha_mask), masks=concept_masks))
    return out


def missing_folders(concepts: list[Concept]) -> list[str]:
    """One sentence per concept folder that does not exist, naming the setting to fix."""
    problems = []
    for c in concepts:
        if not c.folder.is_dir():
            what = "is a file, not a folder" if c.folder.exists() else "does not exist"
            problems.append(f"{c.setting}: the folder {c.folder} {what}. Put the images there or point "
                            f"{'data.images' if c.setting == 'data.images' else c.setting + '.folder'} "
                            "at the folder that holds them")
    return problems


def balance_regularization(records: list) -> None:
    """Give regularization images the repeats kohya gives them, in place.

    kohya registers regularization images in order, each with its own repeats, until they add up
    to the training images per epoch; if one pass is not enough it goes round again adding one
    repeat per image. So a run with regularization sees about as many regularization as training
    images each epoch, and surplus regularization images are not used (repeats 0). Called again on
    a subset of the records (a held-out split) it rebalances that subset.
    """
    usable = [r for r in records if r.usable]
    reg = [r for r in usable if getattr(r, "is_reg", False)]
    for r in usable:
        r.repeats = r.base_repeats
    if not reg:
        return
    train_count = sum(r.base_repeats for r in usable if not r.is_reg)
    for r in reg:
        r.repeats = 0
    n = 0
    first_pass = True
    while n < train_count:
        for r in reg:
            if first_pass:
                r.repeats = r.base_repeats
                n += r.base_repeats
            else:
                r.repeats += 1
                n += 1
            if n >= train_count:
                break
        first_pass = False


def scan_project(cfg: ProjectConfig, root: Path, *, tokenize=None, progress: Progress | None = None,  # noqa: ANN001
                 workers: int | None = None) -> ScanReport:
    """Scan every concept of the project into one report (one list of records)."""
    from loratui.data.masks import attach_masks

    concepts = resolve_concepts(cfg, Path(root))
    kwargs = dict(resolution=cfg.data.resolution, bucket_step=cfg.data.bucket_step, workers=workers)
    if tokenize is not None:
        kwargs["tokenize"] = tokenize
    if len(concepts) == 1 and concepts[0].setting == "data.images":
        c = concepts[0]
        report = scan_images(c.folder, caption_extension=c.caption_extension, trigger_word=c.trigger_word,
                             progress=progress, **kwargs)
        report.concepts = concepts
        _drop_masks_folder(report, c)
        for r in report.records:
            r.base_repeats = r.repeats
        if report.error is None:
            attach_masks(report.records, c)
        return report
    parts: list[ScanReport] = []
    for c in concepts:
        part = scan_images(c.folder, caption_extension=c.caption_extension, trigger_word=c.trigger_word,
                           class_tokens=c.class_tokens, progress=progress, **kwargs)
        _drop_masks_folder(part, c)
        for r in part.records:
            r.concept = c.index
            r.is_reg = c.is_reg
            r.base_repeats = r.repeats = r.repeats * c.repeats
        if part.error is None:
            attach_masks(part.records, c)
        for r in part.records:
            r.rel = f"{c.name}/{r.rel}"
        parts.append(part)
    common = Path(os.path.commonpath([str(c.folder) for c in concepts]))
    report = ScanReport(images_dir=common, resolution=cfg.data.resolution,
                        caption_extension=cfg.data.caption_extension, bucket_step=cfg.data.bucket_step,
                        concepts=concepts)
    for c, part in zip(concepts, parts):
        report.records.extend(part.records)
        report.notices.extend(f"{c.name}: {n}" for n in part.notices)
        if part.error is not None:
            report.notices.append(f"{c.setting} ({c.name}): {part.error}")
        elif not part.usable:
            report.notices.append(f"{c.setting} ({c.name}): none of its images can be trained")
    balance_regularization(report.records)
    if not report.usable:
        report.error = "no usable images in any concept: " + "; ".join(
            p.error or f"{c.name} has none usable" for c, p in zip(concepts, parts))
    return report


def _drop_masks_folder(report: ScanReport, concept: Concept) -> None:
    """A masks folder kept inside the images folder holds masks, not training images."""
    masks = concept.masks
    if masks is None or not masks.is_relative_to(concept.folder):
        return
    kept = [r for r in report.records if not r.path.absolute().is_relative_to(masks)]
    if len(kept) != len(report.records):
        report.notices.append(f"{masks.name}/: {len(report.records) - len(kept)} masks inside the images "
                              "folder, used as masks and not trained on")
        report.records = kept


@dataclass(frozen=True)
class ConceptCount:
    concept: Concept
    images: int  # found
    usable: int
    per_epoch: int  # images seen per epoch, repeats and balancing included
    share: float  # of the epoch, 0..1


def concept_counts(report: ScanReport) -> list[ConceptCount]:
    """Per concept: how many images, how many usable, and its share of an epoch."""
    total = max(1, report.images_per_epoch)
    trained = report.trained
    out = []
    for c in report.concepts:
        mine = [r for r in report.records if r.concept == c.index]
        usable = [r for r in mine if r.usable]
        per_epoch = sum(r.repeats for r in trained if r.concept == c.index)
        out.append(ConceptCount(c, len(mine), len(usable), per_epoch, per_epoch / total))
    return out


def concept_summary(report: ScanReport) -> tuple:
    """Per concept (name, "train"|"reg", usable images, images per epoch, share) for the dashboard;
    empty when there is one folder and no regularization, where the image count says it all."""
    if len(report.concepts) < 2 and not any(c.is_reg for c in report.concepts):
        return ()
    return tuple((c.concept.name, "reg" if c.concept.is_reg else "train", c.usable, c.per_epoch,
                  round(c.share, 4)) for c in concept_counts(report))


def empty_concepts(report: ScanReport) -> list[str]:
    """Sentences for concepts that contribute nothing: a missing folder, no images, none usable."""
    problems = missing_folders(report.concepts)
    missing = {c.index for c in report.concepts if not c.folder.is_dir()}
    for count in concept_counts(report):
        c = count.concept
        if c.index in missing:
            continue
        if count.images == 0:
            problems.append(f"{c.setting}: the folder {c.folder} holds no images (looked for .jpg .jpeg .png "
                            ".webp .bmp, including sub-folders); add images or remove the concept")
        elif count.usable == 0:
            problems.append(f"{c.setting}: none of the {count.images} images in {c.folder} can be trained; "
                            "run `loratui check` to see why")
    return problems
