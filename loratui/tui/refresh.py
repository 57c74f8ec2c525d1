"""How often the dashboard repaints from step events: no faster than a person reads.

A fast GPU finishes many steps a second; the numbers, the sparkline and the loss plot
are repainted at most every ``draw_interval_s()`` (events other than steps still
repaint at once). Over SSH every repaint crosses the network, so the default is slower
there. ``LORATUI_REFRESH`` (seconds between repaints) overrides both.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

ENV_VAR = "LORATUI_REFRESH"
DRAW_INTERVAL_S = 0.5
"""Two repaints a second on a local terminal."""
REMOTE_DRAW_INTERVAL_S = 1.0
"""One a second when the terminal is at the other end of an SSH connection."""
LIMITS_S = (0.1, 60.0)

log = logging.getLogger(__name__)


def is_remote(environ: Mapping[str, str]) -> bool:
    """The terminal is reached over SSH (sshd sets these; tmux keeps them from the session's start)."""
    return any(environ.get(name) for name in ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY"))


def draw_interval_s(environ: Mapping[str, str] | None = None) -> float:
    """Seconds between repaints: ``LORATUI_REFRESH`` if set and sensible, else by where the terminal is."""
    environ = os.environ if environ is None else environ
    default = REMOTE_DRAW_INTERVAL_S if is_remote(environ) else DRAW_INTERVAL_S
    raw = environ.get(ENV_VAR, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not LIMITS_S[0] <= value <= LIMITS_S[1]:
        log.warning("%s=%s is not a number of seconds between %g and %g; using %g",
                    ENV_VAR, raw, *LIMITS_S, default)
        return default
    return value
