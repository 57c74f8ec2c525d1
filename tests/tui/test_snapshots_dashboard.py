"""How the dashboard looks mid-run, paused, finished and failed, in a dark and a light theme,
on a small (80×24) and a roomy (120×40) terminal. Everything on screen is fixed: the fake
engine's values and timestamps, the clock, the time zone and the project's path."""

from __future__ import annotations

import pytest

from loratui.tui.app import LoratuiApp
from loratui.tui.modals import ErrorModal

from .conftest import BACKEND, FIXED_NOW, settle, wait_until
from .fake_engine import FakeEngine

STATES = ("mid", "paused", "finished", "failed")
VIEWS = [("dark", (120, 40)), ("dark", (80, 24)), ("light", (120, 40))]


def engine_for(state: str) -> FakeEngine:
    kwargs = dict(sample_every=10, checkpoint_every=10, prompts=("a photo of sks dog", "sks dog, watercolor"))
    if state in ("mid", "paused"):
        return FakeEngine(40, hold_at=24, **kwargs)
    if state == "failed":
        return FakeEngine(40, fail_at=27, **kwargs)
    return FakeEngine(40, **kwargs)


def reach(state: str, engine: FakeEngine):
    async def run_before(pilot) -> None:
        screen = pilot.app.screen
        await pilot.press("t")
        if state in ("mid", "paused"):
            await wait_until(pilot, lambda: engine.holding.is_set() and screen.state.step == 24)
            if state == "paused":
                await pilot.press("p")
                await wait_until(pilot, lambda: screen.state.phase == "paused")
        elif state == "finished":
            await wait_until(pilot, lambda: screen.state.phase == "finished")
        else:
            await wait_until(pilot, lambda: isinstance(pilot.app.screen, ErrorModal))
            await wait_until(pilot, lambda: not screen.state.running)
        await settle(pilot, screen)
    return run_before


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("theme,size", VIEWS, ids=[f"{t}-{w}x{h}" for t, (w, h) in VIEWS])
def test_dashboard(snap_compare, snapshot_project, state, theme, size):
    engine = engine_for(state)
    app = LoratuiApp(snapshot_project, mode="open", engine=engine, theme=theme, clock=lambda: FIXED_NOW,
                     warmup=lambda: BACKEND)
    try:
        assert snap_compare(app, terminal_size=size, run_before=reach(state, engine))
    finally:
        engine.release()
