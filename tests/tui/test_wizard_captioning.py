"""The Captions step's captioning panel (F5), caption tools (F6) and review pass (F4), from the keyboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, OptionList, Static

from tests.captioner_models import build_wd_tagger

from .run_wizard import WizardHost, fake_services, make_project

pytest.importorskip("onnxruntime")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_project(tmp_path / "demo_lora")
    text = (root / "loratui.toml").read_text()
    (root / "loratui.toml").write_text(text.replace('trigger_word = ""', 'trigger_word = "sks"'))
    return root


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.pause(0.05)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def status(screen: Any, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def open_captions(pilot: Pilot[Any]) -> None:
    await settle(pilot)
    pilot.app.screen.action_goto(2)
    await settle(pilot)


async def test_caption_panel_captions_the_image_without_one_and_the_list_follows(project: Path,
                                                                                 tmp_path: Path) -> None:
    tagger = build_wd_tagger(tmp_path / "tagger")
    before = {p: p.read_text() for p in (project / "images").rglob("*.txt")}
    app = WizardHost(project, services=fake_services())
    async with app.run_test(size=(110, 34)) as pilot:
        await open_captions(pilot)
        await pilot.press("f5")
        await pilot.pause()
        panel = app.screen
        model = panel.query_one("#cr-model", Input)
        assert model.value == "vlm"
        model.value = str(tagger)
        model.focus()
        await pilot.press("enter")
        await settle(pilot)
        text = status(panel, "#cr-status")
        assert "wrote 1 caption(s)" in text and "3 already captioned, skipped" in text, text
        assert "broken.png" in text  # the unreadable file is named
        assert (project / "images" / "10_dog" / "sofa.txt").read_text().startswith("sks, zxc character, solo")
        assert {p: p.read_text() for p in before} == before  # the captioned ones are untouched
        await pilot.press("escape")
        await pilot.pause()
        options = app.screen.query_one("#caption-list", OptionList)
        assert str(options.get_option_at_index(1).prompt) == "✓ 10_dog/sofa.png"


async def test_caption_tools_count_tags_edit_in_bulk_and_undo(project: Path) -> None:
    images = project / "images"
    before = {p: p.read_text() for p in images.rglob("*.txt")}
    app = WizardHost(project, services=fake_services())
    async with app.run_test(size=(110, 34)) as pilot:
        await open_captions(pilot)
        await pilot.press("f6")
        await pilot.pause()
        tools = app.screen
        table = tools.query_one("#ct-table", DataTable)
        rows = {table.get_row_at(i)[1]: int(table.get_row_at(i)[0]) for i in range(table.row_count)}
        assert rows == {"a photo of sks dog on a beach": 1, "sks dog running in a park": 1, "close-up of sks dog": 1}
        tools.query_one("#ct-find", Input).value = "sks dog"
        tools.query_one("#ct-replace", Input).value = "zxc cat"
        await pilot.click("#ct-do-replace")
        await pilot.pause()
        assert (images / "park.txt").read_text() == "zxc cat running in a park"
        assert "changed 3 caption file(s)" in status(tools, "#ct-status")
        await pilot.click("#ct-add-trigger")
        await pilot.pause()
        assert (images / "park.txt").read_text() == "sks, zxc cat running in a park"
        await pilot.click("#ct-undo")
        await pilot.pause()
        assert (images / "park.txt").read_text() == "zxc cat running in a park"
        await pilot.pause(0.5)  # two quick clicks on one button are a double click
        await pilot.click("#ct-undo")
        await pilot.pause()
        assert {p: p.read_text() for p in images.rglob("*.txt")} == before
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.query_one("#caption-text").text == "close-up of sks dog"


async def test_review_pass_walks_every_picture_with_its_caption(project: Path) -> None:
    app = WizardHost(project, services=fake_services())
    async with app.run_test(size=(110, 34)) as pilot:
        await open_captions(pilot)
        screen = app.screen
        seen = []
        for _ in range(4):
            await pilot.press("f4")
            await pilot.pause()
            seen.append(screen.query_one("#caption-text").text)
            assert screen.focused is screen.query_one("#caption-text")
        assert seen == ["", "a photo of sks dog on a beach", "sks dog running in a park", "close-up of sks dog"]
        assert "reviewing 1 of 4" in status(screen, "#captions-status")


async def test_a_folder_that_is_not_a_captioner_is_named_in_the_panel(project: Path, tmp_path: Path) -> None:
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text('{"model_type": "clip_text_model"}')
    app = WizardHost(project, services=fake_services())
    async with app.run_test(size=(110, 34)) as pilot:
        await open_captions(pilot)
        await pilot.press("f5")
        await pilot.pause()
        panel = app.screen
        panel.query_one("#cr-model", Input).value = str(tmp_path / "clip")
        panel.query_one("#cr-max-length", Input).value = "0"
        await pilot.press("f5")
        await settle(pilot)
        assert "max length is at least 1" in status(panel, "#cr-status")
        panel.query_one("#cr-max-length", Input).value = "40"
        await pilot.press("f5")
        await settle(pilot)
        text = status(panel, "#cr-status")
        assert "is a clip_text_model model, not a captioner" in text
        assert panel.query_one("#cr-status").has_class("-error")
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.query_one("#caption-list", OptionList)  # back on the step, nothing written
    assert not (project / "images" / "10_dog" / "sofa.txt").exists()
