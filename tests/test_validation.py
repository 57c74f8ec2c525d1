"""Validation images and the validation loss: held out by the seed, never trained on, measured with
fixed noise and timesteps, logged, printed and kept as the best checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from loratui.cli import main
from loratui.commands import CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.data.holdout import held_out_count, split_records
from loratui.engine.evaluate import evaluate_items, stratified_timesteps
from loratui.engine.trainer import Trainer
from loratui.engine.validation import auto_interval
from loratui.project import ProjectPaths

torch.set_num_threads(1)


def _set(project: Path, *assignments: str) -> None:
    cfg = load_config(project)
    for a in assignments:
        apply_override(cfg, a)
    save_config(project, cfg)


def _records(n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(rel=f"img_{i:02d}.png") for i in range(n)]


def test_split_is_chosen_by_the_seed_and_never_takes_every_image() -> None:
    trained, held = split_records(_records(20), 0.2, seed=42)
    assert len(held) == 4 and len(trained) == 16
    assert {r.rel for r in held}.isdisjoint(r.rel for r in trained)
    # The same images whatever order the folder was listed in; another seed picks others.
    again = split_records(list(reversed(_records(20))), 0.2, seed=42)[1]
    assert [r.rel for r in again] == [r.rel for r in held]
    assert [r.rel for r in split_records(_records(20), 0.2, seed=7)[1]] != [r.rel for r in held]
    assert held_out_count(1, 0.5) == 0 and held_out_count(2, 0.5) == 1 and held_out_count(3, 0.01) == 1
    assert held_out_count(10, 0.0) == 0


def test_timesteps_cover_every_band_and_stay_fixed() -> None:
    ts = stratified_timesteps(1000, seed=42)
    assert ts == stratified_timesteps(1000, seed=42)
    assert len(ts) == 4
    for band, values in enumerate(ts):
        assert all(band * 250 <= t < (band + 1) * 250 for t in values), (band, values)
        assert values[0] < band * 250 + 125 <= values[1]  # one from each half of the band
    assert stratified_timesteps(1000, seed=43) != ts


def test_automatic_interval_keeps_evaluation_under_five_percent() -> None:
    interval = auto_interval(held_out=4, total_steps=2000, images_per_step=2)
    evaluations = 2000 // interval + 1  # and one at the end
    forwards_per_eval = 4 * 8
    share = evaluations * forwards_per_eval / (2000 * 2 * 3 + evaluations * forwards_per_eval)
    assert share < 0.05, share
    assert auto_interval(held_out=1, total_steps=10_000, images_per_step=16) == 250  # at most 40 a run


def test_held_out_images_are_never_in_a_training_batch_and_the_loss_is_fixed(sample_project: Path) -> None:
    _set(sample_project, "validation.split=0.25", "save.every_n_steps=0", "sample.every_n_steps=0")
    cfg = load_config(sample_project)
    trainer = Trainer(sample_project, cfg, emit=lambda e: None, commands=CommandChannel(), max_steps=4)
    trainer.setup()
    try:
        s = trainer.session
        held = {item.rel for item in s.held_out}
        assert len(held) == 4  # 16 images, a quarter held out
        seen = set()
        plan = s.dataset.plan
        for index in range(plan.batches_per_epoch * 3):
            _, entries = plan.micro_batch(index)
            seen.update(s.dataset.items[e.item].rel for e in entries)
        assert seen.isdisjoint(held)
        assert len(seen) == 12  # every other image is trained
        # `loratui check` counts the epoch the run has: the held-out images are not in it.
        from loratui.data.concepts import scan_project
        from loratui.data.holdout import mark_held_out, project_holdout
        from loratui.project import ProjectPaths

        report = scan_project(cfg, sample_project)
        mark_held_out(report, project_holdout(ProjectPaths(sample_project), cfg, report.usable))
        assert {r.rel for r in report.held_out} == held
        assert report.steps_per_epoch(cfg.train.batch_size) == plan.batches_per_epoch
        assert report.images_per_epoch == plan.images_per_epoch
        first = evaluate_items(s, s.held_out, seed=cfg.train.seed)
        second = evaluate_items(s, s.held_out, seed=cfg.train.seed)
        assert first.loss == second.loss and first.band_losses == second.band_losses
        assert len(first.band_losses) == 4
        assert first.loss == pytest.approx(sum(first.band_losses.values()) / 4)
        for _ in range(2):
            trainer._optimizer_step()
        third = evaluate_items(s, s.held_out, seed=cfg.train.seed)
        assert third.loss != first.loss
        # Evaluating changed nothing: the same weights give the same number again.
        assert evaluate_items(s, s.held_out, seed=cfg.train.seed).loss == third.loss
    finally:
        trainer.cleanup()


def test_a_validation_folder_inside_the_images_folder_is_not_trained_on(sample_project: Path) -> None:
    images = sample_project / "images"
    (images / "held").mkdir()
    for stem in ("toy_00", "toy_01"):
        for suffix in (".jpg", ".txt"):
            shutil.move(images / f"{stem}{suffix}", images / "held" / f"{stem}{suffix}")
    _set(sample_project, "validation.folder=images/held", "save.every_n_steps=0", "sample.every_n_steps=0")
    trainer = Trainer(sample_project, load_config(sample_project), emit=lambda e: None,
                      commands=CommandChannel(), max_steps=2)
    trainer.setup()
    try:
        s = trainer.session
        assert sorted(i.rel for i in s.held_out) == ["toy_00.jpg", "toy_01.jpg"]
        assert not any(i.rel.startswith("held/") for i in s.dataset.items)
        assert len(s.dataset.items) == 14
    finally:
        trainer.cleanup()


def test_split_and_folder_together_are_refused(sample_project: Path, capsys) -> None:
    code = main(["train", str(sample_project), "--headless", "--set", "validation.split=0.1",
                 "--set", "validation.folder=images"])
    assert code == 2
    assert "validation.folder and validation.split are both set" in capsys.readouterr().err


def test_check_names_the_held_out_images(sample_project: Path, capsys) -> None:
    _set(sample_project, "validation.split=0.15")
    main(["check", str(sample_project)])
    out = capsys.readouterr().out
    out = " ".join(out.split())
    assert "2 of 16 images held out" in out and "toy_06.jpg" in out


def test_headless_run_logs_and_prints_the_validation_loss(sample_project: Path, capsys) -> None:
    code = main(["train", str(sample_project), "--headless", "--max-steps", "6", "--set", "validation.split=0.15",
                 "--set", "validation.every_n_steps=3", "--set", "save.every_n_steps=0",
                 "--set", "sample.every_n_steps=0", "--set", "logging.tensorboard=true"])
    assert code == 0
    assert list((ProjectPaths(sample_project).logs / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in ProjectPaths(sample_project).metrics.read_text().splitlines()]
    validation = [r for r in rows if r["event"] == "validation"]
    assert [r["step"] for r in validation] == [3, 6]
    assert all(r["val_loss"] > 0 and len(r["band_losses"]) == 4 and r["images"] == 2 for r in validation)
    assert [r["step"] for r in rows if r["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    out = capsys.readouterr().out
    assert "validation at step 3: val_loss" in out and "of the run so far" in out


def test_best_checkpoint_survives_pruning_and_resume_and_exports(sample_project: Path, monkeypatch,
                                                                 capsys) -> None:
    """The losses are scripted (best at step 4) so the test is about keeping, not about learning."""
    from safetensors import safe_open

    from loratui.commands import Command
    from loratui.engine import validation as validation_module
    from loratui.engine.evaluate import EvalResult
    from loratui.engine.runner import run_training
    from loratui.events import CheckpointSaved, StepDone, ValidationDone

    scripted = iter([1.0, 0.8, 0.9, 0.92, 0.95])

    def fake_evaluate(session, items, *, seed):
        loss = next(scripted)
        return EvalResult(loss, {"t0-249": loss}, len(items), 0.01)

    monkeypatch.setattr(validation_module, "evaluate_items", fake_evaluate)
    _set(sample_project, "validation.split=0.15", "validation.every_n_steps=2", "save.every_n_steps=0",
         "save.keep=1", "sample.every_n_steps=0")
    seen = []
    commands = CommandChannel()

    def emit(event) -> None:
        seen.append(event)
        if isinstance(event, StepDone) and event.step == 5:
            commands.send(Command.STOP)

    run_training(sample_project, emit=emit, commands=commands, max_steps=8)
    checkpoints = ProjectPaths(sample_project).checkpoints
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000004", "step-000005"]
    assert [e.reason for e in seen if isinstance(e, CheckpointSaved)] == ["best", "best", "stop"]
    run_training(sample_project, emit=seen.append, commands=CommandChannel(), resume=True, max_steps=8)
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000004", "step-000008"]
    last = [e for e in seen if isinstance(e, ValidationDone)][-1]
    assert (last.step, last.best_step, last.best_val_loss) == (8, 4, 0.8)
    assert [e for e in seen if isinstance(e, CheckpointSaved)][-1].best_step == 4

    assert main(["export", str(sample_project), "--best"]) == 0
    best_file = ProjectPaths(sample_project).output / "zxc_toy-best.safetensors"
    with safe_open(str(best_file), "pt") as f:
        assert f.metadata()["ss_steps"] == "4"
    assert "from step-000004, the lowest validation loss (0.8000)" in " ".join(capsys.readouterr().out.split())


def test_export_best_without_validation_says_what_to_do(sample_project: Path, capsys) -> None:
    main(["train", str(sample_project), "--headless", "--max-steps", "1", "--set", "sample.every_n_steps=0"])
    capsys.readouterr()
    assert main(["export", str(sample_project), "--best"]) == 2
    assert "records no validation loss" in " ".join(capsys.readouterr().err.split())
