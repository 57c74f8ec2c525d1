"""Validation on SD3 and FLUX: held-out images measured through the family's flow objective.

A band's timestep t is read as σ = t / 1000, with the image's fixed noise, so
the loss per band is the flow loss at four noise levels; two evaluations of the
same weights agree exactly, and ``save.keep_best`` keeps the lowest one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from loratui.commands import CommandChannel
from loratui.config import load_config
from loratui.engine.evaluate import evaluate_items
from loratui.engine.trainer import Trainer
from loratui.events import CheckpointSaved, ValidationDone
from loratui.project import ProjectPaths
from tests.test_flow_families import make_project, train

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3"])
def test_flow_validation_logs_finite_band_losses_repeats_exactly_and_keeps_the_best(tmp_path: Path,
                                                                                   name: str) -> None:
    project = make_project(tmp_path, f"builtin:{name}", "validation.split=0.25", "validation.every_n_steps=2",
                           "save.keep_best=true", "train.learning_rate=0.003")
    events = train(project, 4)
    paths = ProjectPaths(project)

    rows = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    validation = [r for r in rows if r["event"] == "validation"]
    assert [r["step"] for r in validation] == [2, 4]
    for r in validation:
        assert r["images"] == 4 and len(r["band_losses"]) == 4, r
        assert all(math.isfinite(v) and v > 0 for v in r["band_losses"].values()), r
        assert r["val_loss"] == pytest.approx(sum(r["band_losses"].values()) / 4)
    # Flow matching's target ε − x is hardest to predict at high noise: the bands are not one number.
    assert len(set(validation[0]["band_losses"].values())) == 4

    # save.keep_best: the step with the lowest validation loss is the one kept and reported as best.
    best = min(validation, key=lambda r: r["val_loss"])["step"]
    done = [e for e in events if isinstance(e, ValidationDone)]
    assert done[-1].best_step == best
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert saved[-1].best_step == best and any(e.reason == "best" for e in saved)
    assert (paths.checkpoints / f"step-{best:06d}").is_dir()

    # The same weights (the final checkpoint, loaded in a new session) give the logged number again, twice.
    cfg = load_config(project)
    trainer = Trainer(project, cfg, emit=lambda e: None, commands=CommandChannel(), resume=True, max_steps=4)
    trainer.setup()
    try:
        assert trainer.step == 4
        s = trainer.session
        first = evaluate_items(s, s.held_out, seed=cfg.train.seed)
        second = evaluate_items(s, s.held_out, seed=cfg.train.seed)
    finally:
        trainer.cleanup()
    assert (first.loss, first.band_losses) == (second.loss, second.band_losses)
    assert first.loss == pytest.approx(validation[-1]["val_loss"], rel=1e-6)
