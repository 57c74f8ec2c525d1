"""Every caption a run or a tool replaces is copied here first, so nothing is ever lost.

``<base>/.caption-backup/<time>/`` holds one numbered copy per replaced caption and
``manifest.jsonl``, one line per caption file touched, appended (and flushed) before the
caption itself changes: after a crash, Ctrl+C or a full disk the manifest still describes
every change made. ``restore`` undoes the newest run that has not been restored yet:
replaced captions get their old text back, captions the run created are removed unless
they have been edited since.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from loratui.captioning.base import BACKUP_DIR
from loratui.data.captions import write_caption
from loratui.errors import UserError

MANIFEST = "manifest.jsonl"
RESTORED_SUFFIX = ".restored"


class CaptionBackup:
    """The backup of one run; ``write`` replaces a caption after keeping the old one."""

    def __init__(self, base: Path, what: str, *, clock=time.time) -> None:  # noqa: ANN001
        self.base = Path(base)
        self.what = what
        self._clock = clock
        self.folder: Path | None = None  # made on the first write, so a run that changes nothing leaves none
        self.count = 0

    def _open(self) -> Path:
        if self.folder is None:
            root = self.base / BACKUP_DIR
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
            folder = root / stamp
            n = 1
            while folder.exists() or folder.with_name(folder.name + RESTORED_SUFFIX).exists():
                n += 1
                folder = root / f"{stamp}-{n}"
            folder.mkdir(parents=True)
            (folder / "what.info").write_text(self.what + "\n", encoding="utf-8")
            self.folder = folder
        return self.folder

    def write(self, caption: Path, text: str) -> None:
        """Write ``text`` to ``caption`` atomically, keeping its old content in the backup first."""
        folder = self._open()
        self.count += 1
        had = caption.is_file()
        record = {"caption": str(caption.absolute()), "had": had, "wrote": text}
        if had:
            copy = folder / f"{self.count:06d}{caption.suffix}"
            shutil.copy2(caption, copy)
            record["copy"] = copy.name
        with open(folder / MANIFEST, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        write_caption(caption, text)


@dataclass
class Restored:
    folder: Path
    what: str
    restored: int = 0
    removed: int = 0
    kept: list[str] = field(default_factory=list)  # edited since the run: left as they are


def backups(base: Path) -> list[Path]:
    """Runs that can still be restored, oldest first."""
    root = Path(base) / BACKUP_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.endswith(RESTORED_SUFFIX)
             and (p / MANIFEST).is_file()]
    return sorted(found, key=_order)


def _order(folder: Path) -> tuple[str, int]:
    # "20261204-150512-2" is the second run of that second; "-10" must sort after "-9".
    stamp, _, n = folder.name.partition("-")[2].partition("-")
    return folder.name[:8] + stamp, int(n) if n.isdigit() else 1


def restore_latest(base: Path) -> Restored:
    found = backups(base)
    if not found:
        raise UserError(f"nothing to restore: {Path(base) / BACKUP_DIR} holds no caption backup "
                        "(no captions were replaced or written by loratui here, or all were restored).")
    return restore(found[-1])


def restore(folder: Path) -> Restored:
    from loratui.data.captions import read_caption

    what = (folder / "what.info").read_text(encoding="utf-8").strip() if (folder / "what.info").is_file() else ""
    result = Restored(folder, what)
    lines = (folder / MANIFEST).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    # Newest first: a caption touched twice in one run ends at its state before the run.
    for record in reversed(records):
        caption = Path(record["caption"])
        if record["had"]:
            old = (folder / record["copy"]).read_bytes()
            _write_bytes(caption, old)
            result.restored += 1
            continue
        if not caption.is_file():
            continue
        if read_caption(caption).text != record["wrote"].strip():
            result.kept.append(str(caption))
            continue
        caption.unlink()
        result.removed += 1
    folder.rename(folder.with_name(folder.name + RESTORED_SUFFIX))
    return result


def _write_bytes(path: Path, data: bytes) -> None:
    # The old file's exact bytes (its encoding included) go back, still atomically.
    tmp = path.with_name(f".{path.name}.restore.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
