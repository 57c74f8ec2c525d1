"""The project folder: where each file lives, and creating a project (the run lock is ``loratui.run.lock``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from loratui.config import CONFIG_NAME, ConfigError, ProjectConfig, load_config, save_config
from loratui.run.lock import LOCK_NAME, ProjectLocked, RunLock

__all__ = ["ProjectLocked", "ProjectPaths", "RunLock", "create_project", "safe_name"]


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
        return self.root / LOCK_NAME

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
