"""`s` in the dashboard always answers, driven with the real engine on the tiny model."""

from __future__ import annotations

from pathlib import Path

from loratui.config import load_config, save_config
from loratui.engine.runner import run_training
from loratui.tui.dashboard import DashboardScreen

from .conftest import wait_until


async def test_sample_now_without_prompts_shows_a_picture_and_names_its_captions(make_app, sample_project: Path):
    cfg = load_config(sample_project)
    cfg.sample.prompts = []
    cfg.sample.every_n_steps = cfg.save.every_n_steps = 0
    cfg.sample.steps = 2
    cfg.train.max_steps = 400  # long enough that the run is still going when the sample is asked for
    save_config(sample_project, cfg)
    app = make_app(run_training, root=sample_project)  # type: ignore[arg-type]
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await pilot.press("s")  # nothing running yet: a reason, not silence
        assert "No sample" in screen.query_one("#status").text
        await pilot.press("t")
        await wait_until(pilot, lambda: screen.state.step >= 1, timeout=180)
        await pilot.press("s")
        await wait_until(pilot, lambda: len(screen.state.samples) >= 2, timeout=180)
        assert all(s.source.startswith("caption of ") for s in screen.state.samples)
        assert any("no [[sample.prompts]]: sampling with" in line for line in screen.state.log)
        assert any(line.startswith("sample at step") for line in screen.state.log)
        await pilot.press("q")
        await pilot.pause(0.1)
        await pilot.press("a")  # the quit dialog: leave without saving
