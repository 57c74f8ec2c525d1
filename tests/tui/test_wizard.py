"""The project wizard driven from the keyboard: validation, saving, scan, captions, model, Start."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, OptionList, Static

from loratui.config import load_config
from loratui.tui.wizard import WizardScreen
from loratui.tui.wizard.fields import ConfigField

from .run_wizard import WizardHost, fake_services, make_project


def on_disk(project: Path) -> dict[str, Any]:
    return tomllib.loads((project / "loratui.toml").read_text(encoding="utf-8"))


async def saved(pilot: Pilot[Any], project: Path) -> dict[str, Any]:
    """loratui.toml once the wizard has written what was typed (it waits for typing to pause)."""
    deadline = time.monotonic() + 30  # a loaded machine runs the save's timer late, not never
    while pilot.app.screen.pending_save and time.monotonic() < deadline:
        await pilot.pause(0.05)
    return on_disk(project)


def text_of(screen: Any, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def settle(pilot: Pilot[Any]) -> None:
    """Let timers fire and thread workers finish, then let their messages land."""
    from textual.worker import WorkerCancelled

    await pilot.pause(0.05)
    for _ in range(20):
        try:
            await pilot.app.workers.wait_for_complete()
            break
        except WorkerCancelled:
            # Leaving the Images step starts a fresh scan, which cancels one still running: that is the
            # wizard working as meant, so wait for the rest.
            await pilot.pause(0.05)
    await pilot.pause()


async def type_into(pilot: Pilot[Any], selector: str, text: str) -> None:
    """Replace a field's text; the last character is a real key press, the rest is pasted."""
    field = pilot.app.screen.query_one(selector)
    editor = field if isinstance(field, Input) else field.query_one(Input)
    editor.focus()
    await pilot.pause()  # focusing may select the old text; let it, then replace it
    editor.value = text[:-1]
    editor.cursor_position = len(editor.value)
    await pilot.press(text[-1]) if text else await pilot.pause()
    await pilot.pause()


async def goto(pilot: Pilot[Any], number: int) -> None:
    pilot.app.screen.action_goto(number)
    await settle(pilot)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "demo_lora")


def real_probe_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Instant answers, but the real model probe (the built-ins are made in a cache of the test's own)."""
    from loratui.tui.wizard.services import Services

    monkeypatch.setenv("LORATUI_CACHE_DIR", str(tmp_path / "cache"))
    services, real = fake_services(), Services()
    services.probe, services.model_errors = real.probe, real.model_errors
    return services


def host(project: Path, **kwargs: Any) -> WizardHost:
    return WizardHost(project, services=kwargs.pop("services", fake_services()), **kwargs)


async def test_scan_lists_every_image_with_its_problems(project: Path) -> None:
    app = host(project)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        table = screen.query_one("#scan-table", DataTable)
        rows = {table.get_row_at(i)[0]: table.get_row_at(i) for i in range(table.row_count)}
        assert sorted(rows) == ["10_dog/close.png", "10_dog/sofa.png", "beach.png", "broken.png", "park.jpg"]
        assert rows["broken.png"][-1] == "SKIPPED"
        assert rows["10_dog/sofa.png"][4] == "missing"
        assert rows["park.jpg"][1:4] == ["768×512", "×1", "640×384"]
        assert rows["10_dog/close.png"][2] == "×10"
        summary = text_of(screen, "#scan-summary")
        assert "4 usable · 1 skipped · 1 without caption" in summary
        assert "22 images/epoch → 22 steps/epoch at batch size 1" in summary
        assert "10_dog ×10 (2 images)" in summary
        assert "512×512" in text_of(screen, "#scan-histogram")
        table.focus()
        table.move_cursor(row=list(rows).index("broken.png"))
        await pilot.pause()
        detail = text_of(screen, "#scan-detail")
        assert detail.startswith("broken.png") and "Traceback" not in detail and len(detail) > 20
        assert screen.problems() == []


async def test_a_missing_images_folder_is_explained_and_blocks_start(project: Path) -> None:
    app = host(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await type_into(pilot, "#data-images", "nowhere")
        await settle(pilot)
        field = app.screen.query_one("#data-images", ConfigField)
        assert "there is no folder" in field.error and "nowhere" in field.error
        assert "there is no folder" in text_of(field, ".cf-note")
        assert (await saved(pilot, project))["data"]["images"] == "images"
        assert any(p.startswith("1 Images · data.images") for p in app.screen.problems())

        other = project / "more"
        (other / "a").mkdir(parents=True)
        (project / "images" / "beach.png").rename(other / "a" / "beach.png")
        await type_into(pilot, "#data-images", "more")
        await settle(pilot)
        assert "Press Enter to scan more" in text_of(app.screen, "#scan-summary")  # not while typing
        assert app.screen.query_one("#scan-table", DataTable).row_count == 0
        await pilot.press("enter")
        await settle(pilot)
        assert field.error == ""
        assert (await saved(pilot, project))["data"]["images"] == "more"
        assert app.screen.query_one("#scan-table", DataTable).row_count == 1
        assert app.screen.problems() == []


async def test_editing_a_caption_writes_its_file(project: Path) -> None:
    app = host(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        screen = app.screen
        options = screen.query_one("#caption-list", OptionList)
        assert [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)] == [
            "✓ 10_dog/close.png", "✗ 10_dog/sofa.png", "✓ beach.png", "✓ park.jpg"]
        options.highlighted = 3  # park.jpg
        await pilot.pause()
        area = screen.query_one("#caption-text")
        assert area.text == "sks dog running in a park"
        area.focus()
        await pilot.press("end", *", grass")
        await pilot.pause(0.8)  # written once typing pauses
        assert (project / "images" / "park.txt").read_text() == "sks dog running in a park, grass"

        await pilot.press("f3")  # next image without a caption: the sofa
        await pilot.pause()
        assert options.highlighted == 1 and "typing creates sofa.txt" in text_of(screen, "#caption-file")
        assert screen.focused is area and area.text == ""
        await pilot.press(*"sks dog on a sofa")
        await pilot.press("ctrl+n")  # leaving the step writes at once
        await pilot.pause()
        assert (project / "images" / "10_dog" / "sofa.txt").read_text() == "sks dog on a sofa"
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert str(options.get_option_at_index(1).prompt) == "✓ 10_dog/sofa.png"


async def test_prefix_is_added_to_and_removed_from_every_caption(project: Path) -> None:
    images = project / "images"
    before = {p: p.read_text() for p in images.rglob("*.txt")}
    app = host(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await goto(pilot, 2)
        await type_into(pilot, "#prefix-input", "sks style")
        await pilot.click("#prefix-add")
        await settle(pilot)
        for path, text in before.items():
            assert path.read_text() == f"sks style, {text}"
        assert not (images / "10_dog" / "sofa.txt").exists()  # no caption file is invented
        status = text_of(app.screen, "#captions-status")
        assert "changed 3 caption file(s)" in status and "1 image(s) without a caption file" in status
        assert app.screen.query_one("#caption-text").text == "sks style, close-up of sks dog"

        await pilot.click("#prefix-remove")
        await settle(pilot)
        assert {p: p.read_text() for p in images.rglob("*.txt")} == before


async def test_model_step_shows_the_family_or_the_loaders_reason(project: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    services = real_probe_services(tmp_path, monkeypatch)
    app = host(project, services=services)
    async with app.run_test(size=(100, 30)) as pilot:
        await goto(pilot, 3)
        result = app.screen.query_one("#model-result", Static)
        assert "SD 1.x · epsilon · builtin" in str(result.render())

        await type_into(pilot, "#model-base", "missing/model.safetensors")
        await pilot.pause(0.5)
        await settle(pilot)
        assert "does not exist" in str(result.render()) and result.has_class("-error")
        assert any("3 Model · model.base:" in p and "does not exist" in p for p in app.screen.problems())

        await pilot.click("#preset-tiny-sdxl")
        await pilot.pause(0.5)
        await settle(pilot)
        assert "SDXL · epsilon" in str(result.render())
        assert (await saved(pilot, project))["model"]["base"] == "builtin:tiny-sdxl"
        assert app.screen.problems() == []


async def test_the_resolution_follows_the_model_until_the_user_sets_one(project: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    services = real_probe_services(tmp_path, monkeypatch)
    assert on_disk(project)["data"]["resolution"] == 512  # the default, not chosen by anyone
    app = host(project, services=services)
    async with app.run_test(size=(100, 30)) as pilot:
        await goto(pilot, 3)
        await settle(pilot)
        # The tiny built-in was trained at 128 px: 512 would cost 16x the work for nothing.
        assert (await saved(pilot, project))["data"]["resolution"] == 128
        assert "training resolution set to 128 px" in text_of(app.screen, "#model-result")

        await goto(pilot, 5)
        assert app.screen.query_one("#data-resolution", ConfigField).value == 128
        await type_into(pilot, "#data-resolution", "256")
        assert (await saved(pilot, project))["data"]["resolution"] == 256
        await goto(pilot, 3)
        await pilot.click("#preset-tiny-sdxl")
        await pilot.pause(0.5)
        await settle(pilot)
        # The user's own choice stands; the step says what the model would like.
        assert (await saved(pilot, project))["data"]["resolution"] == 256
        assert "trained at 128 px; training resolution is 256" in text_of(app.screen, "#model-result")


async def test_a_batch_larger_than_the_dataset_is_explained(project: Path) -> None:
    app = host(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await goto(pilot, 5)
        images = len(app.screen.state.report.usable)
        await type_into(pilot, "#train-batch-size", str(images + 4))
        await pilot.pause()
        assert f"batch size {images + 4} is more than the {images} images" in text_of(app.screen,
                                                                                  "#training-length")
        await type_into(pilot, "#train-batch-size", "1")
        await pilot.pause()
        assert "is more than" not in text_of(app.screen, "#training-length")


async def test_lora_rank_is_validated_and_the_scale_follows(project: Path) -> None:
    app = host(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await goto(pilot, 4)
        await type_into(pilot, "#lora-rank", "0")
        field = app.screen.query_one("#lora-rank", ConfigField)
        assert field.error == "must be at least 1, not 0"
        assert (await saved(pilot, project))["lora"]["rank"] == 16
        assert any("lora.rank: must be at least 1" in p for p in app.screen.problems())

        await type_into(pilot, "#lora-rank", "8")
        assert (await saved(pilot, project))["lora"]["rank"] == 8
        assert "16 / 8 = 2" in text_of(app.screen, "#lora-scale")
        await pilot.pause(0.6)
        await settle(pilot)
        assert "797.18k" in text_of(app.screen, "#lora-params")

        app.screen.query_one("#lora-train-text-encoder", ConfigField).editor.focus()
        await pilot.press("space")
        await pilot.pause()
        assert (await saved(pilot, project))["lora"]["train_text_encoder"] is True


async def test_lora_type_is_offered_saved_and_recounted(project: Path) -> None:
    import dataclasses

    from textual.widgets import Select

    counted: list[str] = []
    services = dataclasses.replace(fake_services(),
                                   count_params=lambda project_dir, cfg: counted.append(cfg.lora.type) or 1234)
    app = host(project, services=services)
    async with app.run_test(size=(100, 30)) as pilot:
        await goto(pilot, 4)
        await pilot.pause(0.6)
        await settle(pilot)
        assert counted[-1] == "lora"
        field = app.screen.query_one("#lora-type", ConfigField)
        field.query_one(Select).value = "dora"
        await pilot.pause()
        assert (await saved(pilot, project))["lora"]["type"] == "dora"
        await pilot.pause(0.6)
        await settle(pilot)
        assert counted[-1] == "dora"
        assert "1,234" in text_of(app.screen, "#lora-params")


async def test_training_fields_save_or_explain(project: Path) -> None:
    app = host(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await goto(pilot, 5)
        await type_into(pilot, "#data-resolution", "500")
        field = app.screen.query_one("#data-resolution", ConfigField)
        assert "multiple of data.bucket_step (64)" in field.error
        assert (await saved(pilot, project))["data"]["resolution"] == 512

        await type_into(pilot, "#train-learning-rate", "fast")
        assert "must be a number, not 'fast'" in app.screen.query_one("#train-learning-rate", ConfigField).error
        await type_into(pilot, "#train-learning-rate", "0.0003")
        assert (await saved(pilot, project))["train"]["learning_rate"] == pytest.approx(3e-4)

        await type_into(pilot, "#train-epochs", "2")
        assert "2 epochs × 22 batches ÷ 1 accumulation = 44 optimizer steps" in text_of(
            app.screen, "#training-length")

        select = app.screen.query_one("#train-lr-scheduler").editor
        select.value = "cosine"
        await pilot.pause()
        assert (await saved(pilot, project))["train"]["lr_scheduler"] == "cosine"
        assert load_config(project).train.epochs == 2  # what was saved loads again

        # Settings no step lays out by hand are under "More settings", built when opened.
        more = app.screen.query_one("#training-more")
        more.query_one("CollapsibleTitle").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen.query_one("#train-noise-offset", ConfigField)
        app.screen.query_one("#data-flip", ConfigField).editor.focus()
        await pilot.press("space")
        assert (await saved(pilot, project))["data"]["flip"] is True


async def test_sample_prompts_are_added_edited_and_removed(project: Path) -> None:
    app = host(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await goto(pilot, 5)
        await type_into(pilot, "#prompt-text", "photo of sks dog")
        await type_into(pilot, "#prompt-seed", "x")
        await pilot.press("enter")
        assert "seed must be a whole number" in text_of(app.screen, "#prompt-error")
        assert "prompts" not in (await saved(pilot, project))["sample"]
        await type_into(pilot, "#prompt-seed", "7")
        await pilot.press("enter")
        await pilot.pause()
        assert (await saved(pilot, project))["sample"]["prompts"] == [
            {"prompt": "photo of sks dog", "negative": "", "seed": 7, "steps": 0, "guidance": 0.0}]

        await type_into(pilot, "#prompt-text", "sks dog, oil painting")
        await pilot.click("#prompt-save")
        assert [p["prompt"] for p in (await saved(pilot, project))["sample"]["prompts"]] == ["sks dog, oil painting"]

        await pilot.click("#prompt-remove")
        await saved(pilot, project)
        assert load_config(project).sample.prompts == []


async def test_start_is_refused_while_anything_is_invalid(project: Path) -> None:
    posted: list[Message] = []
    app = host(project)
    async with app.run_test(size=(100, 30), message_hook=posted.append) as pilot:
        await settle(pilot)
        await goto(pilot, 4)
        await type_into(pilot, "#lora-alpha", "-1")
        await goto(pilot, 6)
        verdict = text_of(app.screen, "#review-verdict")
        assert "Start needs these fixed first" in verdict and "lora.alpha: must be at least 0" in verdict
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert not any(isinstance(m, WizardScreen.Start) for m in posted)
        assert isinstance(app.screen, WizardScreen) and app.started == []

        await goto(pilot, 4)
        await type_into(pilot, "#lora-alpha", "8")
        await goto(pilot, 6)
        assert "Ready" in text_of(app.screen, "#review-verdict")
        assert "1000 optimizer steps" in text_of(app.screen, "#review-run")
        await pilot.click("#review-start")
        await pilot.pause()
        starts = [m for m in posted if isinstance(m, WizardScreen.Start)]
        assert len(starts) == 1 and starts[0].project_dir == project
        assert app.result == project and not isinstance(app.screen, WizardScreen)


async def test_keys_and_step_bar_move_between_steps(project: Path) -> None:
    app = host(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        await pilot.press("ctrl+n", "ctrl+n")
        assert screen.step == 3
        await pilot.pause()
        assert app.focused is screen.query_one("#model-base", ConfigField).editor  # ready to type
        bar = screen.query_one("#step-bar", Static).render()
        current = [bar.plain[s.start:s.end] for s in bar.spans if "reverse" in str(s.style)]
        assert current == [" 3 Model "]
        await pilot.press("ctrl+b")
        assert screen.step == 2
        await pilot.press("escape")
        assert screen.step == 1
        await pilot.press("escape")
        assert screen.step == 1 and "first step" in text_of(screen, "#wizard-status")
        screen.query_one("#scan-table").focus()
        await pilot.press("5")
        assert screen.step == 5
        await type_into(pilot, "#train-seed", "123")  # digits typed in a field stay in the field
        assert screen.step == 5 and (await saved(pilot, project))["train"]["seed"] == 123
        await pilot.click("#step-bar", offset=(28, 0))  # " 1 Images  2 Captions  3 Model "
        assert screen.step == 3
        await pilot.click("#wizard-next")
        assert screen.step == 4


async def test_a_broken_config_is_reported_not_raised(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    (project / "loratui.toml").write_text('name = "p"\n[train]\nbatch_size = "many"\n', encoding="utf-8")
    app = host(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        status = app.screen.query_one("#wizard-status", Static)
        assert "problem" in str(status.render()) and status.has_class("-error")


def test_planned_steps_agree_with_the_engine(tmp_path: Path) -> None:
    batches = pytest.importorskip("loratui.engine.batches")
    from loratui.config import ProjectConfig
    from loratui.data.scan import scan_images
    from loratui.tui.wizard.step_training import planned_steps

    report = scan_images(make_project(tmp_path / "p") / "images", resolution=512)
    cfg = ProjectConfig()
    for epochs, batch, accum in ((3, 1, 1), (2, 4, 3), (1, 2, 5)):
        cfg.train.epochs, cfg.train.batch_size, cfg.train.grad_accum = epochs, batch, accum
        plan = batches.BatchPlan(tuple(r.bucket for r in report.usable), tuple(r.repeats for r in report.usable),
                                 batch, seed=1)
        assert planned_steps(cfg, report) == batches.total_optimizer_steps(
            plan, epochs=epochs, max_steps=cfg.train.max_steps, grad_accum=accum)


async def test_the_app_opens_the_wizard_and_start_begins_training(project: Path) -> None:
    """Through the real app shell: ``loratui new`` shows the wizard; Start opens the dashboard."""
    from loratui.tui.app import LoratuiApp
    from loratui.tui.dashboard import DashboardScreen

    from .fake_engine import FakeEngine

    engine = FakeEngine(5)
    app = LoratuiApp(project, mode="new", engine=engine, warmup=None,  # type: ignore[arg-type]
                     wizard=lambda folder: WizardScreen(folder, services=fake_services()))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, WizardScreen)
        await goto(pilot, 6)
        await pilot.press("ctrl+n")
        for _ in range(40):
            if isinstance(app.screen, DashboardScreen):
                break
            await pilot.pause(0.05)
        assert isinstance(app.screen, DashboardScreen)
