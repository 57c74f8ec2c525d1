"""How each wizard step looks with the demo corpus, in a dark and a light theme, on a small
(80×24) and a roomy (120×40) terminal. Everything on screen is fixed: the corpus, the fake
model probe and counts, and the paths, which are shown relative to the project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, TextArea

from .run_wizard import WizardHost, fake_services, make_corpus

STEPS = ("images", "captions", "model", "lora", "training", "review")
VIEWS = [("dark", (80, 24)), ("dark", (120, 40)), ("light", (80, 24)), ("light", (120, 40))]


def show_step(number: int):
    async def run_before(pilot: Any) -> None:
        app = pilot.app
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        if number > 1:
            app.screen.action_goto(number)
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
        for widget in [*app.screen.query(Input), *app.screen.query(TextArea)]:
            widget.cursor_blink = False  # a blinking cursor would make the picture depend on timing
        await pilot.pause()
    return run_before


@pytest.mark.parametrize("step", range(1, len(STEPS) + 1), ids=STEPS)
@pytest.mark.parametrize("theme,size", VIEWS, ids=[f"{t}-{w}x{h}" for t, (w, h) in VIEWS])
def test_wizard_step(snap_compare: Any, snapshot_project: Path, step: int, theme: str,
                     size: tuple[int, int]) -> None:
    make_corpus(snapshot_project / "images")
    app = WizardHost(snapshot_project, services=fake_services(), theme=theme)
    assert snap_compare(app, terminal_size=size, run_before=show_step(step))


@pytest.mark.parametrize("step", (3, 5, 6), ids=("model", "training", "review"))
def test_wizard_flux(snap_compare: Any, snapshot_project: Path, step: int) -> None:
    """FLUX.1-dev (the fake probe answers for its hub id): its starting settings and what it needs in memory."""
    from loratui.config import load_config, save_config

    make_corpus(snapshot_project / "images")
    cfg = load_config(snapshot_project)
    cfg.model.base = "black-forest-labs/FLUX.1-dev"
    save_config(snapshot_project, cfg)
    app = WizardHost(snapshot_project, services=fake_services(), theme="dark")
    assert snap_compare(app, terminal_size=(120, 40), run_before=show_step(step))
