"""`u` on a finished run writes the folder ready to publish, as `loratui export DIR --card` does."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from loratui.commands import CommandChannel

from .conftest import wait_until
from .fake_engine import FakeEngine


async def test_publish_key_writes_the_card_folder_of_the_finished_lora(make_app, project):
    FakeEngine(12, sample_every=6)(project, emit=lambda event: None, commands=CommandChannel())
    lora = project / "output" / "demo_lora.safetensors"
    app = make_app(FakeEngine(12))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        screen = app.screen
        assert screen.check_action("publish", ()) is True
        # The fake engine's LoRA is not a safetensors file: the key says so instead of failing.
        await pilot.press("u")
        await wait_until(pilot, lambda: "card folder" in screen.query_one("#status").text)
        assert "No card folder" in screen.query_one("#status").text and "export it again" in \
            screen.query_one("#status").text
        save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, str(lora),
                  metadata={"modelspec.sai_model_spec": "1.0.1", "modelspec.trigger_phrase": "zxc", "ss_steps": "12"})
        await pilot.press("u")
        await wait_until(pilot, lambda: "Wrote" in screen.query_one("#status").text)
    folder = project / "output" / "demo_lora-card"
    newest = project / "samples" / "step-000012"
    assert (folder / "demo_lora.preview.png").read_bytes() == (newest / "00.png").read_bytes()
    assert (folder / "demo_lora.safetensors").read_bytes() == lora.read_bytes()
    assert "instance_prompt: zxc" in (folder / "README.md").read_text(encoding="utf-8")


async def test_publish_is_offered_only_once_a_run_has_finished(make_app):
    app = make_app(FakeEngine(40, hold_at=3))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert screen.check_action("publish", ()) is False  # nothing trained yet
        await pilot.press("t")
        await wait_until(pilot, lambda: screen.state.step >= 3)
        assert screen.check_action("publish", ()) is False  # training
