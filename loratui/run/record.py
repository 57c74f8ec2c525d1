"""The run record beside the socket, and the registry of this user's runs.

The record (``.loratui/run.json``) says a run exists: its pid, host, start
time, config digest and socket; it is rewritten when the run changes state
(training, paused, finished…), never per step. The registry is a folder in
the user's state folder with one small file per project, so ``loratui
status`` with no folder finds every run of this user on this machine. A
record whose process is gone is stale: the run is shown as dead. Whether the
process is gone is asked of the project's run lock, which the kernel drops
when the process ends, not of the pid (pids are reused; a zombie keeps its).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from loratui.run.location import RunFiles, private_folder, registry_dir
from loratui.tomlfile import atomic_write_text

log = logging.getLogger("loratui.run")

FINAL_STATES = ("finished", "stopped", "aborted", "failed")


@dataclass
class RunRecord:
    project: str
    pid: int
    host: str
    started_at: float
    config_digest: str
    socket: str
    state: str = "starting"
    """starting, training, paused, stopping, then finished, stopped, aborted or failed."""
    resume_command: str = ""
    message: str = ""
    """Why a failed run failed."""
    lora_path: str = ""
    step: int = 0
    total_steps: int = 0
    ended_at: float | None = None
    cost_per_hour: float = 0.0
    updated_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def process_alive(self) -> bool:
        """Whether this record's process still runs on this machine."""
        lock_says = self._lock_says_alive()
        if lock_says is None:  # a filesystem without file locks: the pid is all there is
            return self.on_this_host and pid_alive(self.pid)
        return self.on_this_host and lock_says

    def alive_elsewhere(self) -> bool:
        """Whether this record's process runs on another machine sharing the project folder."""
        return not self.on_this_host and self._lock_says_alive() is True

    def _lock_says_alive(self) -> bool | None:
        from loratui.run.lock import lock_path, probe_lock

        probe = probe_lock(lock_path(Path(self.project)))
        if not probe.held:
            return probe.held
        owner = probe.owner
        # Held by another run (one starting over this old record) is no life of this record's process.
        return owner is None or (owner.pid == self.pid and owner.host in ("", self.host))


def config_text_digest(project: Path) -> str:
    try:
        data = (project / "loratui.toml").read_bytes()
    except OSError:
        return ""
    return hashlib.sha256(data).hexdigest()[:16]


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    # A zombie (exited, not yet reaped by its parent) is as good as dead.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def read_record(project: Path) -> RunRecord | None:
    path = RunFiles(Path(project)).record
    try:
        return RunRecord.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("unreadable run record %s: %s", path, exc)
        return None


def write_record(record: RunRecord) -> None:
    """The record in the project and its copy in the registry (both written atomically)."""
    record.updated_at = time.time()
    files = RunFiles(Path(record.project))
    text = record.to_json()
    private_folder(files.folder)
    atomic_write_text(files.record, text, mode=0o600)
    try:
        private_folder(registry_dir())
        atomic_write_text(files.registry_entry, text, mode=0o600)
    except OSError as exc:  # the registry is a convenience; the run must not fail for it
        log.warning("could not update the run registry %s: %s", files.registry_entry, exc)


def registered_projects() -> list[Path]:
    """Every project this user has run on this machine (newest first), from the registry."""
    folder = registry_dir()
    entries: list[tuple[float, Path]] = []
    if not folder.is_dir():
        return []
    for path in folder.glob("*.json"):
        try:
            record = RunRecord.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            log.warning("ignoring an unreadable registry entry %s", path)
            continue
        project = Path(record.project)
        if not (project / "loratui.toml").is_file():
            path.unlink(missing_ok=True)  # the project was deleted or moved: forget it
            continue
        entries.append((record.started_at, project))
    return [p for _, p in sorted(entries, reverse=True)]
