"""Themes as data: ``themes/*.toml`` files turned into Textual themes.

Keeping colours in TOML (one file per theme) lets a user add or tweak a theme
without touching code: files in ``<config dir>/themes`` are read after the
bundled ones and win on a name clash.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
import sys
from pathlib import Path

from textual.theme import Theme

from loratui.settings import config_dir

DEFAULT_THEME = "dark"
# Used when the bundled files are missing (an install without the themes folder),
# so `--theme dark` still means something sensible.
FALLBACKS = {"dark": "textual-dark", "light": "textual-light", "high-contrast": "textual-ansi"}

_COLOUR_KEYS = ("primary", "secondary", "warning", "error", "success", "accent",
                "foreground", "background", "surface", "panel", "boost")


class ThemeError(ValueError):
    """A theme file a user must fix; the message names the file and the key."""


def bundled_theme_dir() -> Path:
    # A source checkout (or editable install) reads the repository's themes/ folder; an installed
    # wheel carries the same files to <prefix>/share/loratui/themes.
    checkout = Path(__file__).resolve().parents[2] / "themes"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "loratui" / "themes"


def theme_dirs() -> list[Path]:
    """Folders searched for theme files, later ones overriding earlier ones."""
    return [bundled_theme_dir(), config_dir() / "themes"]


def load_theme(path: Path) -> Theme:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ThemeError(f"theme file {path} cannot be read: {exc}") from None
    allowed = {f.name for f in fields(Theme)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ThemeError(f"theme file {path}: unknown key(s) {', '.join(unknown)}; "
                         f"known keys are {', '.join(sorted(allowed))}")
    if "primary" not in raw:
        raise ThemeError(f"theme file {path} needs at least `primary = \"#rrggbb\"`")
    for key in _COLOUR_KEYS:
        if key in raw and not isinstance(raw[key], str):
            raise ThemeError(f"theme file {path}: {key} must be a colour in quotes, not {raw[key]!r}")
    variables = raw.get("variables", {})
    if not isinstance(variables, dict):
        raise ThemeError(f"theme file {path}: [variables] must be a table")
    raw["name"] = str(raw.get("name") or path.stem)
    raw["variables"] = {str(k): str(v) for k, v in variables.items()}
    theme = Theme(**raw)
    try:
        theme.to_color_system()  # parse every colour now, so a typo names its file
    except Exception as exc:  # noqa: BLE001 - Textual raises several error types for bad colours
        raise ThemeError(f"theme file {path}: {exc}") from None
    return theme


def discover_themes(dirs: list[Path] | None = None) -> tuple[dict[str, Theme], list[str]]:
    """Every readable theme by name, and a sentence for each file that could not be used."""
    themes: dict[str, Theme] = {}
    problems: list[str] = []
    for folder in dirs if dirs is not None else theme_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                theme = load_theme(path)
            except ThemeError as exc:
                problems.append(str(exc))
                continue
            themes[theme.name] = theme
    return themes, problems


def resolve_theme_name(name: str | None, available: set[str]) -> str | None:
    """The registered theme that ``name`` stands for, or None when there is none."""
    name = name or DEFAULT_THEME
    if name in available:
        return name
    fallback = FALLBACKS.get(name)
    if fallback in available:
        return fallback
    return None
