"""The model's family starts the training settings, except those the user chose themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from loratui.config import coerce_value, field_spec, load_config, save_config
from loratui.models.family import FAMILIES
from loratui.models.family_defaults import FAMILY_SETTINGS, family_start
from loratui.tui.wizard.fields import ConfigField

from .test_wizard import goto, host, real_probe_services, saved, settle, text_of, type_into


@pytest.fixture
def project(tmp_path: Path) -> Path:
    from .run_wizard import make_project

    return make_project(tmp_path / "demo_lora")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_starts_every_setting_with_a_value_the_config_accepts(family: str) -> None:
    start = family_start(family)
    assert set(start) == set(FAMILY_SETTINGS)
    for path, value in start.items():
        assert coerce_value(field_spec(path), value) == value, path
    assert start["data.resolution"] == (512 if family in ("sd1", "sd2") else 1024)


async def pick_builtin(pilot, name: str) -> None:
    await pilot.click(f"#preset-{name}")
    await pilot.pause(0.5)  # the probe waits for typing to pause
    await settle(pilot)


async def test_detecting_flux_sets_its_starting_settings_and_sd1_takes_them_back(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = real_probe_services(tmp_path, monkeypatch)
    app = host(project, services=services)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, 4)  # the LoRA step's fields exist: the change must reach them too
        await goto(pilot, 3)
        await pick_builtin(pilot, "tiny-flux")
        cfg = await saved(pilot, project)
        assert cfg["model"]["base"] == "builtin:tiny-flux"
        assert cfg["data"]["resolution"] == 128  # the tiny model's own size
        assert cfg["lora"]["preset"] == "all"
        assert cfg["train"]["precision"] == "bf16"
        assert cfg["train"]["gradient_checkpointing"] is True
        assert cfg["train"]["learning_rate"] == pytest.approx(1e-4)
        assert cfg["sample"]["guidance"] == pytest.approx(3.5)  # FLUX-dev's guidance embedding, not CFG
        said = text_of(app.screen, "#model-result")
        assert ("set for FLUX.1 as sd-scripts, ai-toolkit and diffusers start it: learning rate 0.0001, "
                "layers all, precision bf16, gradient checkpointing on, sample guidance 3.5 (steps 4 and 5)") in said
        assert app.screen.query_one("#lora-preset", ConfigField).value == "all"

        # What the wizard set for FLUX it takes back for a UNet: none of it was the user's.
        await pick_builtin(pilot, "tiny-sd")
        cfg = await saved(pilot, project)
        assert (cfg["lora"]["preset"], cfg["train"]["precision"], cfg["train"]["gradient_checkpointing"]) == \
            ("attention", "no", False)
        assert cfg["sample"]["guidance"] == pytest.approx(7.0)
        assert "set for" not in text_of(app.screen, "#model-result")
        assert app.screen.problems() == []


async def test_settings_the_user_typed_survive_a_change_of_model(project: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    services = real_probe_services(tmp_path, monkeypatch)
    app = host(project, services=services)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, 5)
        await type_into(pilot, "#train-learning-rate", "0.0003")
        assert (await saved(pilot, project))["train"]["learning_rate"] == pytest.approx(3e-4)
        await goto(pilot, 3)
        await pick_builtin(pilot, "tiny-sd3")
        cfg = await saved(pilot, project)
        assert cfg["train"]["learning_rate"] == pytest.approx(3e-4)
        assert cfg["train"]["precision"] == "bf16"  # not typed: the family's
        assert "kept your learning rate 0.0003 (the family starts at 0.0001)" in text_of(app.screen,
                                                                                         "#model-result")
        await pick_builtin(pilot, "tiny-flux")
        cfg = await saved(pilot, project)
        assert cfg["train"]["learning_rate"] == pytest.approx(3e-4)
        assert cfg["lora"]["preset"] == "all"
        assert app.screen.query_one("#train-learning-rate", ConfigField).value == pytest.approx(3e-4)


async def test_a_value_the_project_came_with_is_the_users(project: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(project)
    cfg.lora.preset = "attention+ff"
    save_config(project, cfg)
    services = real_probe_services(tmp_path, monkeypatch)
    app = host(project, services=services)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, 3)
        await pick_builtin(pilot, "tiny-flux")
        cfg_on_disk = await saved(pilot, project)
        assert cfg_on_disk["lora"]["preset"] == "attention+ff"
        assert cfg_on_disk["train"]["precision"] == "bf16"
        assert "kept your layers attention+ff (the family starts at all)" in text_of(app.screen, "#model-result")


async def test_the_family_set_by_hand_decides(project: Path) -> None:
    app = host(project)  # the fake probe: tiny-sd is SD1
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, 3)
        await settle(pilot)
        app.screen.query_one("#model-family", ConfigField).set_value("flux")
        await settle(pilot)
        assert (await saved(pilot, project))["lora"]["preset"] == "all"


async def test_review_shows_the_memory_plan_for_the_model_and_settings(project: Path) -> None:
    app = host(project)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, 3)
        await type_into(pilot, "#model-base", "black-forest-labs/FLUX.1-dev")
        await pilot.pause(0.5)
        await settle(pilot)
        await goto(pilot, 6)
        await settle(pilot)
        await pilot.pause(0.3)
        memory = text_of(app.screen, "#review-memory")
        assert "memory plan for black-forest-labs/FLUX.1-dev at 1024 px: base auto" in memory
        assert "24 GB: fastest that fits" in memory
        estimate = text_of(app.screen, "#review-estimate")
        assert "full-size FLUX.1-dev (12 B parameters)" in estimate

        await goto(pilot, 3)
        app.screen.state.cfg.model.base_precision = "int8"  # a changed config is planned again on entering
        await goto(pilot, 6)
        await settle(pilot)
        await pilot.pause(0.3)
        assert "base int8" in text_of(app.screen, "#review-memory")
