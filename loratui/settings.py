"""User settings that outlive a project: the theme and the recent projects.

A small TOML file in ``$LORATUI_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/loratui``,
else ``~/.config/loratui``. It is written atomically so that a crash or a full
disk never leaves half a file behind.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from loratui.tomlfile import atomic_write_text
from loratui.userdirs import user_dir

SETTINGS_NAME = "settings.toml"
RECENT_LIMIT = 10


def config_dir() -> Path:
    """Where loratui keeps its own files (settings, user themes)."""
    return user_dir("LORATUI_CONFIG_DIR", "XDG_CONFIG_HOME", ".config")


def settings_path() -> Path:
    return config_dir() / SETTINGS_NAME


@dataclass
class Settings:
    theme: str | None = None
    """Name of the theme last chosen; None uses the default."""
    recent: list[str] = field(default_factory=list)
    """Project folders opened most recently first, as absolute paths."""
    problem: str | None = None
    """Why the file on disk could not be used, for the app to tell the user; never saved."""

    def add_recent(self, project_dir: Path | str) -> None:
        path = str(Path(project_dir).expanduser().resolve())
        self.recent = [path] + [p for p in self.recent if p != path]
        del self.recent[RECENT_LIMIT:]

    def forget(self, project_dir: Path | str) -> None:
        path = str(Path(project_dir).expanduser().resolve())
        self.recent = [p for p in self.recent if p != path]


def load_settings(path: Path | None = None) -> Settings:
    """Read the settings; a missing or broken file gives the defaults (with ``problem`` set when broken)."""
    path = path or settings_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return Settings(problem=f"{path} could not be read ({exc}); using default settings.")
    settings = Settings()
    theme = raw.get("theme")
    if isinstance(theme, str) and theme.strip():
        settings.theme = theme.strip()
    recent = raw.get("recent", [])
    if isinstance(recent, list):
        settings.recent = [p for p in recent if isinstance(p, str) and p][:RECENT_LIMIT]
    return settings


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    path = path or settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = tomlkit.document()
    doc.add(tomlkit.comment("loratui settings; safe to edit while loratui is not running."))
    if settings.theme:
        doc.add("theme", settings.theme)
    doc.add("recent", settings.recent)
    atomic_write_text(path, tomlkit.dumps(doc))
    return path
