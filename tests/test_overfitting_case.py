"""A run built to overfit — few images, a high rate, many steps — gets the advisor's note, and the
best checkpoint it names is kept and exported. Real training on the built-in tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from loratui.cli import main
from loratui.commands import CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.engine.runner import run_training
from loratui.events import Advice, Event, ValidationDone
from loratui.project import ProjectPaths

torch.set_num_threads(1)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 260 steps and 13 evaluations: about ten minutes on a busy two-core CPU
def test_few_images_high_rate_many_steps_is_called_overfitting(sample_project: Path) -> None:
    images = sample_project / "images"
    for path in list(images.iterdir()):  # keep six images: four to train on, two held out
        if path.is_dir():
            shutil.rmtree(path)
        elif not path.stem.startswith(("toy_00", "toy_01", "toy_02", "toy_03", "toy_04", "toy_05")):
            path.unlink()
    cfg = load_config(sample_project)
    for a in ("validation.split=0.34", "validation.every_n_steps=20", "train.learning_rate=0.02",
              "train.batch_size=1", "lora.rank=32", "lora.alpha=32", "data.resolution=64",
              "sample.every_n_steps=0", "save.every_n_steps=0"):
        apply_override(cfg, a)
    save_config(sample_project, cfg)
    seen: list[Event] = []
    run_training(sample_project, emit=seen.append, commands=CommandChannel(), max_steps=260)
    validations = [e for e in seen if isinstance(e, ValidationDone)]
    best = min(validations, key=lambda v: v.val_loss)
    print("validation:", [(v.step, round(v.val_loss, 4)) for v in validations])
    notes = [e for e in seen if isinstance(e, Advice) and e.rule == "overfitting"]
    assert notes, "no overfitting note"
    print(notes[0].text)
    assert f"overfitting since step {best.step}" in notes[0].text
    assert f"The best checkpoint is step {best.step}" in notes[0].text
    assert best.step < validations[-1].step
    checkpoints = ProjectPaths(sample_project).checkpoints
    assert (checkpoints / f"step-{best.step:06d}").is_dir()
    assert main(["export", str(sample_project), "--best"]) == 0
    assert (ProjectPaths(sample_project).output / "zxc_toy-best.safetensors").is_file()
