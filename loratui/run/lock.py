"""The run lock: one training per project, held by the kernel for as long as the run's process lives.

Why not a pid file checked with ``kill(pid, 0)``: pids are reused (after a
reboot, on a busy machine); a killed run that nobody reaps stays a zombie,
which ``kill(pid, 0)`` still finds (containers whose PID 1 does not reap
orphans); and two starters that both find a stale file both remove it and
both train. An ``flock`` on an open file is dropped by the kernel when the
process ends, however it ends, and taking it is one atomic call.

The file also says who holds it (pid, host, start time, command), for the
message a second starter gets; that text is information, never the lock.
Whoever asks "is a run alive here?" (``status``, ``attach``, the dashboard)
tries the lock, shared and for an instant, instead of trusting a pid.

On a filesystem without ``flock`` (some network mounts) the lock falls back to
the file's existence with the owner's host and pid checked, and says so once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loratui.errors import UserError

if TYPE_CHECKING:
    from loratui.project import ProjectPaths

LOCK_NAME = ".loratui.lock"

TAKE_WAIT_S = 1.0
"""A probe (``loratui status``, a dashboard opening) holds the lock shared for an instant; a starter
that meets one tries again for this long before it calls the project busy."""

STARTING_GRACE_S = 10.0
"""Without flock, an empty lock file this young is another starter writing it, not a crash's remains."""

# flock on some network filesystems fails with one of these instead of locking.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}


class ProjectLocked(UserError):
    pass


@dataclass(frozen=True)
class LockOwner:
    """What the lock file says about the process that took it."""

    pid: int
    host: str = ""
    started_at: float = 0.0
    command: str = ""

    def describe(self) -> str:
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        since = f", started {time.strftime('%H:%M', time.localtime(self.started_at))}" if self.started_at else ""
        command = f": {self.command}" if self.command else ""
        return f"process {self.pid}{where}{since}{command}"


@dataclass(frozen=True)
class LockProbe:
    held: bool | None
    """True while a live process holds the lock; None where the filesystem cannot say (no flock)."""
    owner: LockOwner | None


@dataclass
class _Hold:
    fd: int
    pid: int
    count: int
    fallback_note: str | None


_holds: dict[str, _Hold] = {}
_holds_guard = threading.Lock()


def lock_path(project: Path) -> Path:
    return Path(project) / LOCK_NAME


def _key(path: Path) -> str:
    # One project reached through a symlink is still one lock (a second hold in this process would
    # meet its own flock and call the project busy).
    return os.path.realpath(path)


def _own_hold(path: Path) -> _Hold | None:
    hold = _holds.get(_key(path))
    # A forked child inherits the table but is not the run.
    return hold if hold is not None and hold.pid == os.getpid() else None


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py") and "loratui" in Path(argv[0]).parts:
        # ``python -m loratui.x`` leaves the module's file in argv[0]; say it as it was typed.
        parts = Path(argv[0]).with_suffix("").parts
        module = ".".join(parts[len(parts) - 1 - parts[::-1].index("loratui"):])
        argv = ["python", "-m", module.removesuffix(".__main__"), *argv[1:]]
    return shlex.join(argv)[:300]


def read_owner(path: Path) -> LockOwner | None:
    """The owner the lock file names, or None (no file, empty, unreadable). An older loratui wrote
    only the pid."""
    hold = _own_hold(Path(path))
    try:
        if hold is not None:
            # Through the held descriptor: where flock is emulated with POSIX locks (NFS), closing any
            # other descriptor of the file would drop this process's lock.
            text = os.pread(hold.fd, 4096, 0).decode("utf-8", errors="replace")
        else:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return _parse_owner(text.strip())


def _parse_owner(text: str) -> LockOwner | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(data, int):
        return LockOwner(pid=data)
    if not isinstance(data, dict):
        return None
    try:
        return LockOwner(pid=int(data["pid"]), host=str(data.get("host", "")),
                         started_at=float(data.get("started_at", 0.0)), command=str(data.get("command", "")))
    except (KeyError, TypeError, ValueError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open on ``fd`` (a releasing owner removes it)."""
    try:
        mine, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _write_owner(fd: int) -> None:
    owner = LockOwner(pid=os.getpid(), host=socket.gethostname(), started_at=time.time(), command=_command_line())
    data = (json.dumps(asdict(owner)) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def probe_lock(path: Path) -> LockProbe:
    """Whether a live process holds the lock at ``path``, asked of the kernel, never of a pid."""
    path = Path(path)
    if _own_hold(path) is not None:
        return LockProbe(True, read_owner(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return LockProbe(False, None)
    except OSError:
        return LockProbe(None, read_owner(path))
    try:
        # Shared: two probes at once do not disturb each other; closing the file lets it go.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        held: bool | None = False
    except OSError as exc:
        held = None if exc.errno in _NO_FLOCK else True
    finally:
        os.close(fd)
    return LockProbe(held, read_owner(path))


def _pid_alive(pid: int) -> bool:
    from loratui.run.record import pid_alive

    return pid_alive(pid)


class RunLock:
    """One training per project: an flock held on ``.loratui.lock`` for the life of the run.

    Taking it twice in one process (the run service, then the engine inside it) counts, and only the
    last release lets it go. ``fallback_note`` says why the lock is weaker where flock is missing; the run
    service says it once, on the console, the dashboard and in ``train.log``.
    """

    def __init__(self, paths: ProjectPaths | Path | str) -> None:
        self.path = Path(getattr(paths, "lock", paths))
        self.held = False

    @property
    def fallback_note(self) -> str | None:
        hold = _own_hold(self.path)
        return hold.fallback_note if hold is not None else None

    def acquire(self) -> None:
        with _holds_guard:
            hold = _own_hold(self.path)
            if hold is not None:
                hold.count += 1
                self.held = True
                return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + TAKE_WAIT_S
        while True:
            fd, created = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in _NO_FLOCK:
                    self._acquire_without_flock(created, exc)
                    return
                if exc.errno not in _BUSY:
                    raise UserError(f"cannot lock {self.path}: {exc.strerror or exc}.") from None
                if time.monotonic() >= deadline:
                    raise self._locked(read_owner(self.path)) from None
                time.sleep(0.05)
                continue
            if not _same_file(fd, self.path):
                os.close(fd)  # its owner removed it as we opened it; lock the file that is there now
                continue
            _write_owner(fd)
            self._register(fd, None)
            return

    def _open(self) -> tuple[int, bool]:
        """The lock file open for writing, and whether this call created it."""
        flags = os.O_RDWR | os.O_CLOEXEC
        while True:
            try:
                try:
                    return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
                except FileExistsError:
                    try:
                        return os.open(self.path, flags), False
                    except FileNotFoundError:
                        continue  # its owner removed it between the two opens
            except OSError as exc:
                raise UserError(f"cannot create the run lock {self.path}: {exc.strerror or exc}. Make the "
                                "project folder writable and run again.") from None

    def _acquire_without_flock(self, created: bool, why: OSError) -> None:
        """Where flock is missing: who created the file (atomically) owns it; a file naming a process
        that is gone from this host is taken over. Two starters racing for a stale file can both win."""
        note = (f"the filesystem of {self.path.parent} does not support file locks ({why.strerror or why}); "
                "loratui checks the lock file's host and process instead, which cannot rule out two runs "
                "started at the same instant.")
        for _ in range(5):
            if not created:
                owner = read_owner(self.path)
                if self._owner_may_live(owner):
                    raise self._locked(owner, without_flock=True)
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    continue
            else:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            _write_owner(fd)
            self._register(fd, note)
            return
        raise ProjectLocked(f"could not take the run lock {self.path}; delete it if no loratui is running.")

    def _owner_may_live(self, owner: LockOwner | None) -> bool:
        if owner is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return False
            return age < STARTING_GRACE_S
        if owner.pid == os.getpid() and owner.host in ("", socket.gethostname()):
            return False
        if owner.host and owner.host != socket.gethostname():
            return True  # another machine's process: nothing here can tell whether it lives
        return _pid_alive(owner.pid)

    def _register(self, fd: int, note: str | None) -> None:
        with _holds_guard:
            _holds[_key(self.path)] = _Hold(fd=fd, pid=os.getpid(), count=1, fallback_note=note)
        self.held = True

    def _locked(self, owner: LockOwner | None, *, without_flock: bool = False) -> ProjectLocked:
        project = self.path.parent
        who = owner.describe() if owner is not None else "another process, starting just now"
        message = (f"{project} is already training ({who}). Attach to it with `loratui attach {project}`, "
                   f"or stop it with `loratui stop {project}`.")
        if without_flock:
            message += f" This filesystem has no file locks: if no loratui is running there, delete {self.path}."
        return ProjectLocked(message)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with _holds_guard:
            hold = _own_hold(self.path)
            if hold is None:
                return
            hold.count -= 1
            if hold.count > 0:
                return
            del _holds[_key(self.path)]
        # Removed while still held, so a starter that opened it meanwhile sees it is gone and opens anew.
        if _same_file(hold.fd, self.path):
            try:
                self.path.unlink()
            except OSError:
                pass
        os.close(hold.fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
