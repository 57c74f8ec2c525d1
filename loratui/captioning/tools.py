"""Caption tools over many captions at once: tag counts, find/replace, removing tags that
match a list, adding or removing the trigger word. Every change goes through the backup."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from loratui.captioning.backup import CaptionBackup
from loratui.captioning.targets import CaptionJob
from loratui.data.captions import apply_prefix, split_tags, tag_frequency


def frequency_by_group(jobs: list[CaptionJob]) -> dict[str, dict[str, int]]:
    """Tag counts per sub-folder, computed as the LoRA file's ``ss_tag_frequency`` is."""
    groups: dict[str, list[str]] = {}
    for job in jobs:
        if job.text:
            groups.setdefault(job.group, []).append(job.text)
    return {group: tag_frequency(caps) for group, caps in groups.items()}


def frequency_total(jobs: list[CaptionJob]) -> dict[str, int]:
    return tag_frequency(job.text for job in jobs if job.text)


def replace_text(text: str, find: str, replace: str) -> str:
    if not find:
        return text
    new = text.replace(find, replace)
    # A replacement with nothing can leave ", ," or a leading comma behind.
    return ", ".join(split_tags(new)) if "," in new else new.strip()


def _tag_key(tag: str) -> str:
    return tag.replace("_", " ").strip().casefold()


def parse_tag_list(value: str) -> list[str]:
    """Tags from "a, b" or one per line."""
    return [t.strip() for line in value.splitlines() for t in line.split(",") if t.strip()]


def remove_tags(text: str, patterns: list[str]) -> str:
    """Drop every tag matching one of ``patterns`` (exact, or with * and ? as wildcards;
    case and underscores ignored)."""
    keys = [_tag_key(p) for p in patterns if p.strip()]
    if not keys:
        return text
    kept = [t for t in split_tags(text) if not any(fnmatch.fnmatchcase(_tag_key(t), k) for k in keys)]
    return ", ".join(kept)


def add_trigger(text: str, trigger: str) -> str:
    return apply_prefix(text, trigger) if trigger.strip() else text


def remove_trigger(text: str, trigger: str) -> str:
    """Take the trigger word out where it is a tag of its own; sentences mentioning it are left."""
    trigger = trigger.strip()
    if not trigger:
        return text
    tags = split_tags(text)
    kept = [t for t in tags if t.casefold() != trigger.casefold()]
    return text if len(kept) == len(tags) else ", ".join(kept)


@dataclass
class Applied:
    changed: dict[str, str] = field(default_factory=dict)  # caption file -> new text
    failures: list[str] = field(default_factory=list)


def apply_to_captions(jobs: list[CaptionJob], change: Callable[[CaptionJob], str],
                      backup: CaptionBackup) -> Applied:
    """Rewrite each existing caption that ``change`` alters; images without one are left alone."""
    result = Applied()
    for job in jobs:
        if job.text is None:
            continue
        new = change(job).strip()
        if new == job.text:
            continue
        try:
            backup.write(job.caption, new)
        except OSError as exc:
            result.failures.append(f"{job.rel}: cannot write {job.caption.name} ({exc.strerror or exc})")
            if exc.errno == 28:  # ENOSPC: every further write fails the same way
                break
            continue
        job.text = new
        result.changed[str(job.caption)] = new
    return result
