"""The project folder: where each file lives, creating a project, and the run lock."""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from loratui.config import CONFIG_NAME, ConfigError, ProjectConfig, load_config, save_config
from loratui.errors import UserError


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    def images(self, cfg: ProjectConfig) -> Path:
        return self.inside(cfg.data.images, "data.images", must_be_inside=False)

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.logs / "metrics.jsonl"

    @property
    def log_file(self) -> Path:
        return self.logs / "train.log"

    @property
    def cache(self) -> Path:
        return self.root / ".cache"

    @property
    def lock(self) -> Path:
        return self.root / ".loratui.lock"

    def lora_file(self, cfg: ProjectConfig) -> Path:
        return self.output / f"{safe_name(cfg.output_name)}.safetensors"

    def input_path(self, value: str) -> str:
        """A relative path in loratui.toml (a model, a LoRA to start from) means one inside the project,
        wherever loratui runs from; anything else (hub ids, builtin:…, absolute paths) stays as written."""
        if value and not Path(value).expanduser().is_absolute() and (self.root / value).exists():
            return str(self.root / value)
        return value

    def model_spec(self, cfg: ProjectConfig) -> str:
        return self.input_path(cfg.model.base)

    def config_source(self, cfg: ProjectConfig) -> str | None:
        return self.input_path(cfg.model.config_source) or None

    def inside(self, value: str, field: str, *, must_be_inside: bool = True) -> Path:
        """Resolve a path from the config; anything loratui writes must stay inside the project."""
        path = (self.root / value).resolve() if not os.path.isabs(value) else Path(value).resolve()
        if must_be_inside and not path.is_relative_to(self.root.resolve()):
            raise ConfigError(f"{field} = {value!r} points outside the project folder {self.root}; "
                              "loratui only writes inside the project. Use a path inside it.")
        return path


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file name that cannot escape the output folder (no separators, no leading dots)."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "lora"
    return cleaned[:120]


def create_project(root: Path, *, name: str | None = None, cfg: ProjectConfig | None = None) -> ProjectConfig:
    """Make a new project folder with a default config and an empty images folder."""
    root = Path(root)
    if (root / CONFIG_NAME).exists():
        return load_config(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = cfg or ProjectConfig()
    cfg.name = name or safe_name(root.resolve().name) or "my_lora"
    (root / cfg.data.images).mkdir(parents=True, exist_ok=True)
    save_config(root, cfg)
    return cfg


class ProjectLocked(UserError):
    pass


class RunLock:
    """One training per project. The lock file holds the owner's pid; a lock whose process
    is gone (a crash, a kill -9, a reboot) is taken over instead of blocking forever."""

    def __init__(self, paths: ProjectPaths) -> None:
        self.path = paths.lock
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise ProjectLocked(
                        f"{self.path.parent} is already training (process {pid}). Attach to it, or stop it "
                        f"first; if no loratui is running, delete {self.path}.") from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return
        raise ProjectLocked(f"could not take the run lock {self.path}; delete it if no loratui is running.")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
