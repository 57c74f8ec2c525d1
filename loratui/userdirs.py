"""Where loratui keeps its own files outside projects: an explicit variable, else the XDG folder."""

from __future__ import annotations

import os
from pathlib import Path


def user_dir(explicit_var: str, xdg_var: str, home_default: str) -> Path:
    """``$explicit_var``, else ``$xdg_var/loratui``, else ``~/home_default/loratui``."""
    explicit = os.environ.get(explicit_var)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get(xdg_var)
    base = Path(xdg).expanduser() if xdg else Path.home() / home_default
    return base / "loratui"
