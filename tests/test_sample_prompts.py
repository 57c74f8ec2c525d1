"""Samples always answer: with no [[sample.prompts]] the captions of two training images are drawn,
named in the events; a sample that cannot be made says why."""

from __future__ import annotations

from pathlib import Path

import torch

from loratui.commands import Command, CommandChannel
from loratui.config import ProjectConfig, load_config, save_config
from loratui.engine.runner import run_training
from loratui.engine.sample_prompts import propose_prompts, prompts_for_run
from loratui.events import Event, SampleReady, Status, StepDone

torch.set_num_threads(1)

IMAGES = [(f"toy_{i:02d}.jpg", f"a toy, view {i}") for i in range(10)]


def test_two_captions_are_chosen_by_the_seed_with_the_trigger_word() -> None:
    first = propose_prompts(IMAGES, trigger_word="zxc toy", seed=42)
    assert len(first.prompts) == 2
    assert all(p.prompt.startswith("zxc toy, a toy, view ") for p in first.prompts)
    assert [p.seed for p in first.prompts] == [1, 2]
    assert all(src.startswith("caption of toy_") for src in first.sources)
    assert propose_prompts(list(reversed(IMAGES)), trigger_word="zxc toy", seed=42).sources == first.sources
    assert propose_prompts(IMAGES, trigger_word="zxc toy", seed=1).sources != first.sources
    assert "toy_" in first.describe() and "no [[sample.prompts]]" in first.describe()


def test_without_captions_the_trigger_word_is_drawn_and_without_either_a_reason_is_given() -> None:
    uncaptioned = [("a.png", None), ("b.png", "  ")]
    alone = propose_prompts(uncaptioned, trigger_word="zxc toy", seed=42)
    assert [p.prompt for p in alone.prompts] == ["zxc toy"] and alone.sources == ["the trigger word"]
    nothing = propose_prompts(uncaptioned, trigger_word="", seed=42)
    assert not nothing.prompts and "[[sample.prompts]]" in nothing.reason


def test_configured_prompts_win() -> None:
    cfg = ProjectConfig()
    from loratui.config import SamplePrompt

    cfg.sample.prompts = [SamplePrompt(prompt="mine", seed=5)]
    chosen = prompts_for_run(cfg, IMAGES)
    assert [p.prompt for p in chosen.prompts] == ["mine"]


def test_sample_now_without_prompts_draws_two_training_captions(sample_project: Path) -> None:
    cfg = load_config(sample_project)
    cfg.sample.prompts = []
    cfg.sample.every_n_steps = cfg.save.every_n_steps = 0
    cfg.sample.steps = 2
    cfg.validation.split = 0.15
    save_config(sample_project, cfg)
    commands = CommandChannel()
    seen: list[Event] = []

    def emit(event: Event) -> None:
        seen.append(event)
        if isinstance(event, StepDone) and event.step == 1:
            commands.send(Command.SAMPLE_NOW)

    run_training(sample_project, emit=emit, commands=commands, max_steps=2)
    samples = [e for e in seen if isinstance(e, SampleReady)]
    assert len(samples) == 2 and all(s.step == 1 for s in samples)
    assert all(s.source.startswith("caption of ") and s.prompt.startswith("zxc toy") for s in samples)
    assert all(Path(s.path).is_file() for s in samples)
    held_out = {"toy_06.jpg", "toy_11.jpg"}  # never drawn from: they are not trained on
    assert not any(s.source.removeprefix("caption of ") in held_out for s in samples)
    notes = [e.text for e in seen if isinstance(e, Status) and "no [[sample.prompts]]" in e.text]
    assert notes and samples[0].source.removeprefix("caption of ") in notes[0]
