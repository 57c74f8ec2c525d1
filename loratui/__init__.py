"""loratui: a keyboard-driven terminal trainer for Stable Diffusion LoRAs."""

from __future__ import annotations

__version__ = "0.1.0"

# Bumped when loratui.toml changes shape; older files are migrated on load.
CONFIG_VERSION = 1
