"""Where a run's socket and record live, and the per-user registry of runs."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loratui.errors import UserError
from loratui.userdirs import user_dir

RUN_DIR_NAME = ".loratui"
SOCKET_NAME = "run.sock"
RECORD_NAME = "run.json"
OUTPUT_NAME = "run-output.log"
"""A detached run's own stdout and stderr, in logs/."""

# sockaddr_un.sun_path is 108 bytes on Linux (104 on macOS) including the final NUL.
MAX_SOCKET_PATH = 100


def _fits(path: Path) -> bool:
    return len(os.fsencode(str(path))) <= MAX_SOCKET_PATH


class UnsafeRunFolder(UserError):
    pass


def state_dir() -> Path:
    """The user's state folder: the registry of runs, and sockets whose project path is too long."""
    return user_dir("LORATUI_STATE_DIR", "XDG_STATE_HOME", ".local/state")


def registry_dir() -> Path:
    return state_dir() / "runs"


def project_key(project_dir: Path) -> str:
    """A short stable name for a project folder (registry entries, fallback socket names)."""
    return hashlib.sha1(str(Path(project_dir).resolve()).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunFiles:
    """The files of one project's run service."""

    project: Path

    @property
    def folder(self) -> Path:
        return self.project / RUN_DIR_NAME

    @property
    def record(self) -> Path:
        return self.folder / RECORD_NAME

    @property
    def preferred_socket(self) -> Path:
        return self.folder / SOCKET_NAME

    def socket_path(self) -> Path:
        """``.loratui/run.sock``; in a folder too deep for a socket path, one in the user's state folder."""
        preferred = self.preferred_socket.resolve() if self.project.exists() else self.preferred_socket
        if _fits(preferred):
            return self.preferred_socket
        name = f"{project_key(self.project)}.sock"
        # A deep home (or state) folder can be too long as well: then the per-user runtime folder,
        # then a private folder of this user's in the temporary directory.
        candidates = [state_dir() / "sockets"]
        if os.environ.get("XDG_RUNTIME_DIR"):
            candidates.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "loratui")
        candidates.append(Path(tempfile.gettempdir()) / f"loratui-{os.getuid()}")
        for folder in candidates:
            if _fits(folder / name):
                return folder / name
        return candidates[-1] / name

    @property
    def registry_entry(self) -> Path:
        return registry_dir() / f"{project_key(self.project)}.json"

    @property
    def output_log(self) -> Path:
        return self.project / "logs" / OUTPUT_NAME


def private_folder(path: Path) -> Path:
    """Create (or check) a folder only this user can enter: 0700, owned by us, not a symlink."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeRunFolder(f"{path} is not a plain folder; remove it and run again.")
    if info.st_uid != os.getuid():
        raise UnsafeRunFolder(f"{path} belongs to another user (uid {info.st_uid}); remove it and run again.")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path
