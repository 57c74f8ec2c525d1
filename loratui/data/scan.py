"""Scanning an images folder: every image found, decoded once, checked, bucketed
and paired with its caption; nothing in the folder is ever written.

A folder that does not exist or holds no images is not an exception: the
returned ScanReport has ``error`` set, so the wizard and ``loratui check``
show it like any other finding.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import random
import re
import stat
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loratui.data.buckets import Bucket, choose_bucket, crop_plan, make_buckets
from loratui.data.captions import (
    CAPTION_EXTENSIONS,
    CLIP_MAX_TOKENS,
    Tokenize,
    build_caption,
    find_caption,
    read_caption,
    token_limit_warning,
)
from loratui.data.images import (
    IMAGE_EXTENSIONS,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    ImageProblem,
    load_image,
    read_file_bytes,
)

Progress = Callable[[int, int], None]

_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")

# An image needing more than this much upscaling to fill its bucket is called
# out: it will look soft, and the LoRA learns the softness.
_UPSCALE_WARNING = 2.0
# Less than this share of the picture left after cropping is called out.
_KEPT_WARNING = 0.5


@dataclass
class ImageRecord:
    path: Path  # absolute
    rel: str  # relative to the images folder, "/"-separated, for display
    width: int = 0  # after EXIF orientation; 0 when skipped before decoding
    height: int = 0
    mode: str = ""  # Pillow mode as stored, e.g. "CMYK"
    repeats: int = 1
    caption: str | None = None  # cleaned caption text, None when there is no file
    caption_path: Path | None = None
    bucket: Bucket | None = None
    status: str = "ok"  # "ok" | "converted" | "skipped"
    problems: list[str] = field(default_factory=list)  # one sentence each
    info: list[str] = field(default_factory=list)  # harmless facts (EXIF rotation)
    sha256: str = ""  # of the file bytes; the latent cache keys on it
    fingerprint: str = ""  # "size-mtime_ns", a cheap change check
    is_reg: bool = False  # a regularization image (data.concepts' is_reg)
    concept: int = 0  # index into ScanReport.concepts (0 for the data.images shorthand)
    base_repeats: int = 1  # repeats before regularization balancing (see data/concepts.py)
    mask: str | None = None  # "alpha" or a mask file's path when this image's loss is masked

    @property
    def usable(self) -> bool:
        return self.status != "skipped"


@dataclass
class ScanReport:
    images_dir: Path
    resolution: int
    records: list[ImageRecord] = field(default_factory=list)
    caption_extension: str = ".txt"
    bucket_step: int = 64
    error: str | None = None  # set when there is nothing to scan at all
    notices: list[str] = field(default_factory=list)  # folder-level findings
    concepts: list = field(default_factory=list)  # data.concepts.Concept, in config order; empty for a bare scan
    held_out: list[ImageRecord] = field(default_factory=list)
    """Usable images held out for validation (``holdout.mark_held_out``): never trained, so not in an epoch."""

    @property
    def usable(self) -> list[ImageRecord]:
        return [r for r in self.records if r.usable]

    @property
    def trained(self) -> list[ImageRecord]:
        """The usable images an epoch goes through: all but the held-out ones."""
        held = {id(r) for r in self.held_out}
        return [r for r in self.usable if id(r) not in held]

    @property
    def skipped(self) -> list[ImageRecord]:
        return [r for r in self.records if not r.usable]

    @property
    def images_per_epoch(self) -> int:
        return sum(r.repeats for r in self.trained)

    @property
    def bucket_histogram(self) -> dict[Bucket, int]:
        """Images per bucket, repeats included, ordered tall to wide."""
        counts: Counter[Bucket] = Counter()
        for r in self.trained:
            if r.bucket is not None:
                counts[r.bucket] += r.repeats
        return dict(sorted(counts.items(), key=lambda kv: (kv[0][0] / kv[0][1], kv[0][0])))

    @property
    def missing_captions(self) -> list[ImageRecord]:
        # An image captioned by its concept's class tokens has no file and needs none.
        return [r for r in self.usable if r.caption_path is None and r.caption is None]

    @property
    def warning_count(self) -> int:
        """Problems reported on images that will still be trained."""
        return sum(len(r.problems) for r in self.usable)

    def steps_per_epoch(self, batch_size: int = 1) -> int:
        """Batches never mix buckets, so each bucket rounds up on its own."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {batch_size}")
        return sum(math.ceil(n / batch_size) for n in self.bucket_histogram.values())

    def summary_line(self) -> str:
        """One line for logs: the error, or the counts the report starts with."""
        if self.error is not None:
            return self.error
        from loratui.data.report import summary_line  # report imports this module

        return summary_line(self)

    @property
    def exit_code(self) -> int:
        """For ``loratui check``: 0 all usable, 1 some skipped, 2 nothing usable."""
        if self.error is not None or not self.usable:
            return 2
        return 1 if self.skipped else 0


# ---------------------------------------------------------------------------
# Walking the folder


@dataclass
class _Found:
    images: list[tuple[Path, str]] = field(default_factory=list)  # (path, rel)
    unsupported: list[tuple[Path, str]] = field(default_factory=list)
    broken: list[tuple[Path, str, str]] = field(default_factory=list)  # + reason
    captions: set[Path] = field(default_factory=set)
    other_files: int = 0
    notices: list[str] = field(default_factory=list)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _walk(root: Path, directory: Path, found: _Found) -> None:
    """Depth-first, sorted by name, hidden entries ignored.

    Folder symlinks are not followed (one pointing at / would walk the whole
    disk, one pointing at a parent would never end); a symlinked file is read
    like a file.
    """
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        found.notices.append(f"folder {_rel(directory, root) or '.'} cannot be read ({exc.strerror}); skipped")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        rel = _rel(path, root)
        ext = path.suffix.lower()
        if entry.is_symlink():
            try:
                target = os.stat(path)
            except OSError as exc:
                reason = (
                    "symlink loop: the link never reaches a real file; skipped"
                    if exc.errno == errno.ELOOP
                    else f"broken symlink: it points to {os.readlink(path)}, which does not exist; skipped"
                )
                if ext in IMAGE_EXTENSIONS or ext in UNSUPPORTED_IMAGE_EXTENSIONS:
                    found.broken.append((path, rel, reason))
                else:
                    found.notices.append(f"{rel}: {reason}")
                continue
            if stat.S_ISDIR(target.st_mode):
                found.notices.append(_folder_link_notice(root, path, rel))
                continue
        elif entry.is_dir(follow_symlinks=False):
            _walk(root, path, found)
            continue
        if ext in IMAGE_EXTENSIONS:
            found.images.append((path, rel))
        elif ext in UNSUPPORTED_IMAGE_EXTENSIONS:
            found.unsupported.append((path, rel))
        elif ext in CAPTION_EXTENSIONS:
            found.captions.add(path)
        else:
            found.other_files += 1


def _folder_link_notice(root: Path, link: Path, rel: str) -> str:
    target = Path(os.path.realpath(link))
    parent = Path(os.path.realpath(link.parent))
    if parent == target or target in parent.parents:
        return f"{rel}: symlink loop (it points back to {target}); not followed"
    return (
        f"{rel}: folder symlink to {target} not followed; "
        "copy or move those images into the images folder"
    )


def repeats_for(rel: str) -> tuple[int, str | None]:
    """Repeats from the nearest ``N_name`` folder above the image (1 if none),
    and a notice for a folder that looks like one but cannot be."""
    for part in reversed(rel.split("/")[:-1]):
        match = _REPEAT_FOLDER.match(part)
        if match is None:
            continue
        n = int(match.group(1))
        if n >= 1:
            return n, None
        return 1, f"folder {part}: 0 repeats would drop its images; counted once per epoch"
    return 1, None


# ---------------------------------------------------------------------------
# One image


@dataclass
class _Settings:
    images_dir: Path
    resolution: int
    buckets: list[Bucket]
    caption_extension: str
    trigger_word: str
    tokenize: Tokenize | None
    max_tokens: int
    class_tokens: str = ""


def _scan_image(path: Path, rel: str, s: _Settings) -> ImageRecord:
    record = ImageRecord(path=path, rel=rel)
    record.repeats, _ = repeats_for(rel)
    try:
        data = read_file_bytes(path)
        st = os.stat(path)  # cannot fail where the read above succeeded, bar a race
        record.sha256 = hashlib.sha256(data).hexdigest()
        record.fingerprint = f"{st.st_size}-{st.st_mtime_ns}"
        loaded = load_image(path, data=data, check_only=True)
    except ImageProblem as exc:
        record.status = "skipped"
        record.problems.append(exc.reason)
        return record
    except OSError as exc:
        record.status = "skipped"
        record.problems.append(f"cannot access it ({exc.strerror}); skipped")
        return record
    record.width, record.height = loaded.original_size
    record.mode = loaded.original_mode
    if loaded.notes:
        record.status = "converted"
        record.problems.extend(loaded.notes)
    if loaded.orientation_note:
        record.info.append(loaded.orientation_note)
    record.bucket = choose_bucket(record.width, record.height, s.buckets)
    record.problems.extend(_size_problems(record, s.resolution))
    _attach_caption(record, s)
    return record


def _size_problems(record: ImageRecord, resolution: int) -> list[str]:
    assert record.bucket is not None
    w, h = record.width, record.height
    bw, bh = record.bucket
    problems = []
    scale = max(bw / w, bh / h)
    if scale > _UPSCALE_WARNING:
        problems.append(
            f"too small: {w}×{h} is far below the {resolution} px resolution; "
            f"it will be upscaled ×{scale:.1f} and look soft"
        )
    (rw, rh), _ = crop_plan(w, h, record.bucket)
    kept = (bw * bh) / (rw * rh)
    if kept < _KEPT_WARNING:
        problems.append(
            f"extreme aspect ratio: {w}×{h} goes into the {bw}×{bh} bucket and only "
            f"{kept:.0%} of it is kept; crop it by hand to choose what stays"
        )
    return problems


def _display(s: _Settings, path: Path) -> str:
    return f"{s.images_dir.name}/{_rel(path, s.images_dir)}"


def _attach_caption(record: ImageRecord, s: _Settings) -> None:
    fallback = (
        "the trigger word alone will be used"
        if s.trigger_word.strip()
        else "it will train with an empty caption"
    )
    found = find_caption(record.path, s.caption_extension)
    if not found.exists and s.class_tokens.strip():
        # kohya's DreamBooth convention: an image without a caption file is captioned by its class tokens.
        record.caption = s.class_tokens.strip()
        return
    if not found.exists:
        record.problems.append(
            f"no caption file ({_display(s, record.path)} → expected "
            f"{_display(s, found.path)}); {fallback}"
        )
        return
    record.caption_path = found.path
    if found.note:
        record.problems.append(found.note)
    try:
        caption = read_caption(found.path)
    except OSError as exc:
        record.problems.append(
            f"cannot read caption {found.path.name} ({exc.strerror or exc}); {fallback}"
        )
        return
    record.caption = caption.text
    for note in caption.notes:
        if note == "caption file is empty":
            record.problems.append(f"caption file {found.path.name} is empty; {fallback}")
        else:
            record.problems.append(note)
    # No shuffle and no dropout: the rng is never drawn from.
    trained = build_caption(caption.text, trigger_word=s.trigger_word, rng=random.Random(0))
    warning = token_limit_warning(trained, tokenize=s.tokenize, max_tokens=s.max_tokens)
    if warning:
        record.problems.append(warning)


# ---------------------------------------------------------------------------
# The whole folder


def scan_images(
    images_dir: Path | str,
    *,
    resolution: int,
    caption_extension: str = ".txt",
    bucket_step: int = 64,
    tokenize: Tokenize | None = None,
    max_tokens: int = CLIP_MAX_TOKENS,
    trigger_word: str = "",
    class_tokens: str = "",
    progress: Progress | None = None,
    workers: int | None = None,
) -> ScanReport:
    """Scan ``images_dir`` recursively and report on every image in it.

    ``tokenize`` (text → token count without begin/end) makes the caption
    length check exact; without it the count is estimated.  ``progress`` is
    called as (done, total) after each image, on the calling thread.
    ``workers`` threads decode images (default: up to 8, one per CPU).
    """
    images_dir = Path(images_dir).expanduser().absolute()
    report = ScanReport(
        images_dir=images_dir,
        resolution=resolution,
        caption_extension=caption_extension,
        bucket_step=bucket_step,
    )
    if not images_dir.exists():
        report.error = f"images folder {images_dir} does not exist; create it and put the training images there"
        return report
    if not images_dir.is_dir():
        report.error = f"{images_dir} is a file, not a folder; point loratui at the folder that holds the images"
        return report
    settings = _Settings(
        images_dir=images_dir,
        resolution=resolution,
        buckets=make_buckets(resolution, step=bucket_step),
        caption_extension=caption_extension,
        trigger_word=trigger_word,
        tokenize=tokenize,
        max_tokens=max_tokens,
        class_tokens=class_tokens,
    )
    found = _Found()
    _walk(images_dir, images_dir, found)
    report.notices.extend(found.notices)

    records: list[ImageRecord] = []
    total = len(found.images)
    # Pillow and hashlib release the GIL while decoding and hashing, so a few
    # threads scan a folder of big photos several times faster.
    workers = max(1, min(workers or _default_workers(), total or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan") as pool:
        results = pool.map(lambda item: _scan_image(item[0], item[1], settings), found.images)
        for done, record in enumerate(results, start=1):
            records.append(record)
            if progress is not None:
                progress(done, total)
    for path, rel in found.unsupported:
        ext = path.suffix.lower()
        records.append(
            _skipped(path, rel, f"{ext} is not a supported format; convert it to PNG or JPEG; skipped")
        )
    for path, rel, reason in found.broken:
        records.append(_skipped(path, rel, reason))
    records.sort(key=lambda r: r.rel)
    report.records = records

    _note_duplicates(records)
    _note_shared_captions(records, settings)
    report.notices.extend(_folder_notices(records, found, settings))
    if not records:
        report.error = (
            f"no images found in {images_dir} (looked for {', '.join(IMAGE_EXTENSIONS)}, "
            "including sub-folders)"
        )
    return report


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def _skipped(path: Path, rel: str, reason: str) -> ImageRecord:
    record = ImageRecord(path=path, rel=rel, status="skipped")
    record.repeats, _ = repeats_for(rel)
    record.problems.append(reason)
    return record


def _note_duplicates(records: list[ImageRecord]) -> None:
    first_seen: dict[str, ImageRecord] = {}
    # A real file is the original and a symlink to it the copy, whatever the names.
    for r in sorted(records, key=lambda r: (r.path.is_symlink(), r.rel)):
        if not r.usable or not r.sha256:
            continue
        original = first_seen.setdefault(r.sha256, r)
        if original is not r:
            r.problems.append(
                f"same file as {original.rel}; that picture will be seen twice as often"
            )


def _note_shared_captions(records: list[ImageRecord], s: _Settings) -> None:
    by_caption: dict[Path, list[ImageRecord]] = defaultdict(list)
    for r in records:
        if r.usable and r.caption_path is not None:
            by_caption[r.caption_path].append(r)
    for path, sharing in by_caption.items():
        if len(sharing) < 2:
            continue
        for r in sharing:
            others = ", ".join(o.path.name for o in sharing if o is not r)
            r.problems.append(
                f"shares its caption {path.name} with {others}; rename one of them to give each its own"
            )


def _folder_notices(records: list[ImageRecord], found: _Found, s: _Settings) -> list[str]:
    notices: list[str] = []
    seen_folders: set[str] = set()
    for r in records:
        _, notice = repeats_for(r.rel)
        if notice and notice not in seen_folders:
            seen_folders.add(notice)
            notices.append(notice)
    used = {r.caption_path for r in records if r.caption_path is not None}
    orphans = sorted(found.captions - used)
    # Captions of skipped images are not orphans, just unused.
    image_stems = {r.path.with_suffix("") for r in records}
    orphans = [p for p in orphans if p.with_suffix("") not in image_stems]
    if orphans:
        names = ", ".join(_rel(p, s.images_dir) for p in orphans[:3])
        more = f" and {len(orphans) - 3} more" if len(orphans) > 3 else ""
        notices.append(f"{len(orphans)} caption file(s) have no image beside them: {names}{more}")
    if found.other_files:
        notices.append(f"{found.other_files} other file(s) ignored (not images or captions)")
    return notices
