"""The project wizard: images, captions, base model, LoRA, training, review."""

from __future__ import annotations

from loratui.tui.wizard.screen import WizardScreen

__all__ = ["WizardScreen"]
