"""The wizard names the held-out images and offers the proposed sample prompts to keep."""

from __future__ import annotations

from pathlib import Path

import pytest

from loratui.config import load_config, save_config

from .run_wizard import WizardHost, fake_services, make_project
from .test_wizard import goto, saved, settle, text_of


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_project(tmp_path / "demo_lora")
    cfg = load_config(root)
    cfg.validation.split = 0.25
    cfg.data.trigger_word = "sks dog"
    save_config(root, cfg)
    return root


async def test_images_and_review_name_the_split_and_review_keeps_the_proposed_prompts(project: Path) -> None:
    app = WizardHost(project, services=fake_services())
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        summary = text_of(app.screen, "#scan-summary")
        assert "validation: 1 of 4 images held out (validation.split = 0.25, seed 42)" in summary
        held = summary.split("never trained on: ")[1].split()[0]
        # The epoch the run will have, without park.jpg: 10_dog's two images ×10 and one more (22 with it).
        assert held == "park.jpg" and "21 images/epoch → 21 steps/epoch" in summary, summary
        await goto(pilot, 6)
        run = text_of(app.screen, "#review-run")
        assert "validation: 1 of 4 images held out" in run
        assert "21 images/epoch, 21 batches/epoch" in run, run
        assert "no sample prompts: samples (on s) will draw '" in run and run.count("(caption of ") == 2
        assert f"caption of {held}" not in run  # a held-out image is never a sample prompt's source
        keep = app.screen.query_one("#review-keep-prompts")
        assert keep.display
        await pilot.click("#review-keep-prompts")
        await settle(pilot)
        prompts = (await saved(pilot, project))["sample"]["prompts"]
        assert len(prompts) == 2 and all("sks dog" in p["prompt"] for p in prompts)
        assert not app.screen.query_one("#review-keep-prompts").display
        assert "no sample prompts" not in text_of(app.screen, "#review-run")
