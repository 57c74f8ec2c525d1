"""The wizard's Model step detects Z-Image and Qwen-Image, describes them and starts their settings;
Review says what full-size Qwen-Image needs on the usual cards."""

from __future__ import annotations

from pathlib import Path

import pytest

from loratui.tui.wizard.fields import ConfigField

from .test_wizard import goto, host, real_probe_services, saved, settle, text_of, type_into


@pytest.fixture
def project(tmp_path: Path) -> Path:
    from .run_wizard import make_project

    return make_project(tmp_path / "demo_lora")


@pytest.mark.parametrize("base, name, described, preset, guidance", [
    ("builtin:tiny-zimage", "Z-Image", "Qwen3", "attention+ff", 0.0),
    ("builtin:tiny-qwen-image", "Qwen-Image", "Qwen2.5-VL", "attention+ff", 4.0),
])
async def test_the_model_step_detects_describes_and_starts_the_family(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base: str, name: str, described: str,
        preset: str, guidance: float) -> None:
    app = host(project, services=real_probe_services(tmp_path, monkeypatch))
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, 3)
        await type_into(pilot, "#model-base", base)
        await pilot.pause(0.5)  # the probe waits for typing to pause
        await settle(pilot)
        said = text_of(app.screen, "#model-result")
        assert said.startswith(f"✓ {name} · flow") and described in said
        assert f"set for {name} as musubi-tuner, ai-toolkit and diffusers start it" in said
        cfg = await saved(pilot, project)
        assert cfg["lora"]["preset"] == preset
        assert cfg["train"]["precision"] == "bf16" and cfg["train"]["gradient_checkpointing"] is True
        assert cfg["sample"]["guidance"] == pytest.approx(guidance)
        assert app.screen.problems() == []


async def test_review_says_plainly_what_full_size_qwen_image_fits_on(project: Path) -> None:
    from loratui.tui.wizard.services import Services

    from .run_wizard import fake_services

    services = fake_services()
    services.plan_memory = Services().plan_memory  # the real planner, on Qwen-Image's published config
    app = host(project, services=services)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, 3)
        app.screen.query_one("#model-family", ConfigField).set_value("qwen_image")
        await type_into(pilot, "#model-base", "Qwen/Qwen-Image")
        await pilot.pause(0.5)
        await settle(pilot)
        await goto(pilot, 6)
        for _ in range(240):  # the plan builds the 20 B architecture without weights: seconds on a busy CPU
            memory = text_of(app.screen, "#review-memory")
            if "estimating" not in memory:
                break
            await pilot.pause(0.25)
        assert "memory plan for Qwen/Qwen-Image" in memory, memory
        assert "24 GB:" in memory and "48 GB:" in memory and "80 GB:" in memory
        assert "Qwen-Image (20.4 B parameters)" in text_of(app.screen, "#review-estimate")
