"""The wizard's count of trainable parameters is the count the run trains, for every family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loratui.config import load_config
from loratui.engine.build import _inject, load_project_model
from loratui.engine.estimate import count_trainable_params
from loratui.project import ProjectPaths


@pytest.mark.parametrize("base, preset", [("builtin:tiny-sd", "attention"), ("builtin:tiny-sdxl", "all"),
                                          ("builtin:tiny-sd3", "attention+ff"), ("builtin:tiny-flux", "all")])
def test_the_count_on_an_empty_model_is_what_training_trains(sample_project: Path, base: str, preset: str) -> None:
    cfg = load_config(sample_project)
    cfg.model.base = base
    cfg.lora.preset = preset
    cfg.lora.train_text_encoder = True
    paths = ProjectPaths(sample_project)
    model = load_project_model(paths, cfg, dtype=torch.float32, device="cpu")
    _, groups, _ = _inject(cfg, model, paths)
    trained = sum(p.numel() for group in groups for p in group["params"])
    assert len(groups) == 2  # the text encoders' LoRA counted too
    assert count_trainable_params(sample_project, cfg) == trained
