"""End to end on the sample project with the built-in tiny model: what a user of `loratui train` sees."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loratui.cli import main
from loratui.commands import Command, CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.engine.runner import run_training
from loratui.engine.trainer import Trainer
from loratui.events import CheckpointSaved, Event, Finished, Paused, Resumed, SampleReady, Started, StepDone
from loratui.project import ProjectPaths

torch.set_num_threads(1)


def _set(project: Path, *assignments: str) -> None:
    cfg = load_config(project)
    for a in assignments:
        apply_override(cfg, a)
    save_config(project, cfg)


def test_headless_run_writes_lora_checkpoint_samples_and_metrics(sample_project: Path, capsys) -> None:
    code = main(["train", str(sample_project), "--headless", "--max-steps", "6",
                 "--set", "save.every_n_steps=3", "--set", "sample.every_n_steps=6", "--set", "sample.steps=2"])
    assert code == 0
    paths = ProjectPaths(sample_project)
    lora = paths.output / "zxc_toy.safetensors"
    assert lora.is_file()
    with safe_open(str(lora), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert all(k.startswith("lora_unet_") for k in keys)
    for key in ("ss_network_dim", "ss_network_alpha", "ss_network_module", "ss_base_model_version",
                "ss_output_name", "ss_steps", "ss_learning_rate", "ss_resolution", "ss_num_train_images",
                "ss_tag_frequency", "sshs_model_hash"):
        assert key in meta, key
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_steps"] == "6"
    assert json.loads(meta["ss_tag_frequency"])["images"]["zxc toy"] == 12
    assert [p.name for p in sorted(paths.checkpoints.iterdir())] == ["step-000003", "step-000006"]
    samples = sorted((paths.samples / "step-000006").glob("*.png"))
    assert len(samples) == 2 and samples[0].with_suffix(".txt").read_text().startswith("prompt: zxc toy")
    rows = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    # When training began and ended, as kohya's files say it (whole seconds).
    assert float(meta["ss_training_started_at"]) <= rows[0]["time"] + 0.5
    assert float(meta["ss_training_finished_at"]) >= rows[-1]["time"] - 0.5
    for field in ("step", "epoch", "loss", "lr", "step_time_s", "data_time_s", "samples_per_s"):
        assert field in rows[0]
    out = capsys.readouterr().out
    assert "load_lora_weights" in out


def _events(project: Path, *, resume: bool = False, max_steps: int | None = None,
            stop_at: int | None = None) -> list[Event]:
    seen: list[Event] = []
    commands = CommandChannel()

    def emit(event: Event) -> None:
        seen.append(event)
        if stop_at is not None and isinstance(event, StepDone) and event.step == stop_at:
            commands.send(Command.STOP)

    run_training(project, emit=emit, commands=commands, resume=resume, max_steps=max_steps)
    return seen


def _losses(events: list[Event]) -> dict[int, float]:
    return {e.step: e.loss for e in events if isinstance(e, StepDone)}


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_stop_and_resume_gives_the_same_weights_bit_for_bit(sample_project: Path, tmp_path: Path,
                                                            grad_accum: int) -> None:
    _set(sample_project, "save.every_n_steps=0", "sample.every_n_steps=0", f"train.grad_accum={grad_accum}",
         "train.batch_size=3")  # 3 does not divide the epoch: the stop lands mid-epoch
    straight = tmp_path / "straight"
    import shutil

    shutil.copytree(sample_project, straight)
    total = 7
    uninterrupted = _events(straight, max_steps=total)
    first = _events(sample_project, max_steps=total, stop_at=3)
    assert any(isinstance(e, Finished) and e.stopped_early for e in first)
    second = _events(sample_project, resume=True, max_steps=total)
    started = next(e for e in second if isinstance(e, Started))
    assert started.start_step == 3
    a = load_file(str(ProjectPaths(straight).checkpoints / "step-000007" / "lora.safetensors"))
    b = load_file(str(ProjectPaths(sample_project).checkpoints / "step-000007" / "lora.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The loss sequence after the resume matches the uninterrupted run step for step.
    expected = _losses(uninterrupted)
    resumed = {**_losses(first), **_losses(second)}
    assert resumed == expected
    print(f"grad_accum={grad_accum}: stopped at 3, resumed to {total}; {len(expected)} losses identical")
    rows = [json.loads(line) for line in ProjectPaths(sample_project).metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, total + 1))


def test_training_lowers_a_fixed_evaluation_loss(sample_project: Path) -> None:
    from loratui.engine.evaluate import fixed_eval_loss

    cfg = load_config(sample_project)
    for a in ("save.every_n_steps=0", "sample.every_n_steps=0"):
        apply_override(cfg, a)
    trainer = Trainer(sample_project, cfg, emit=lambda e: None, commands=CommandChannel(), max_steps=60)
    trainer.setup()
    try:
        before = fixed_eval_loss(trainer.session)
        trainer.run_steps(60)
        after = fixed_eval_loss(trainer.session)
    finally:
        trainer.cleanup()
    print(f"fixed-noise evaluation loss: before {before:.4f}, after 60 steps {after:.4f} "
          f"({(before - after) / before:.1%} lower)")
    assert after < before * 0.9


def test_pause_resume_sample_and_checkpoint_commands(sample_project: Path) -> None:
    _set(sample_project, "save.every_n_steps=0", "sample.every_n_steps=0", "sample.steps=2")
    commands = CommandChannel()
    seen: list[Event] = []
    paused = threading.Event()

    def emit(event: Event) -> None:
        seen.append(event)
        if isinstance(event, StepDone) and event.step == 2:
            commands.send(Command.PAUSE)
        if isinstance(event, Paused):
            paused.set()

    worker = threading.Thread(target=run_training, kwargs=dict(
        project_dir=sample_project, emit=emit, commands=commands, max_steps=5))
    worker.start()
    assert paused.wait(60)
    steps_while_paused = sum(isinstance(e, StepDone) for e in seen)
    commands.send(Command.SAMPLE_NOW)
    commands.send(Command.CHECKPOINT_NOW)
    commands.send(Command.RESUME)
    worker.join(120)
    assert not worker.is_alive()
    assert steps_while_paused == 2
    kinds = [type(e).__name__ for e in seen]
    i_paused, i_resumed = kinds.index("Paused"), kinds.index("Resumed")
    between = seen[i_paused:i_resumed]
    assert any(isinstance(e, SampleReady) for e in between)
    assert any(isinstance(e, CheckpointSaved) and e.reason == "request" and e.step == 2 for e in between)
    assert not any(isinstance(e, StepDone) for e in between)
    assert isinstance(seen[-1], Finished) and seen[-1].step == 5
    assert isinstance(seen[i_resumed], Resumed)


def test_second_run_reuses_the_latent_cache(sample_project: Path) -> None:
    _set(sample_project, "save.every_n_steps=0", "sample.every_n_steps=0")
    first = [e.text for e in _events(sample_project, max_steps=1) if hasattr(e, "text")]
    second = [e.text for e in _events(sample_project, max_steps=1) if hasattr(e, "text")]
    assert "latents: 0 from cache, 16 encoded" in first
    assert "latents: 16 from cache, 0 encoded" in second
    # Editing one image re-encodes that image only.
    img = next((sample_project / "images").glob("toy_00.jpg"))
    from PIL import Image

    Image.new("RGB", (128, 128), (1, 2, 3)).save(img)
    third = [e.text for e in _events(sample_project, max_steps=1) if hasattr(e, "text")]
    assert "latents: 15 from cache, 1 encoded" in third


def test_checkpoints_are_pruned_and_resume_refuses_a_changed_rank(sample_project: Path, capsys) -> None:
    _set(sample_project, "save.every_n_steps=1", "save.keep=2", "sample.every_n_steps=0")
    seen = _events(sample_project, max_steps=4)
    names = sorted(p.name for p in ProjectPaths(sample_project).checkpoints.iterdir())
    assert names == ["step-000003", "step-000004"]
    # Each save says what it pruned, so a front end never lists a checkpoint that is gone.
    removed = [Path(p).name for e in seen if isinstance(e, CheckpointSaved) for p in e.removed]
    assert removed == ["step-000001", "step-000002"]
    _set(sample_project, "lora.rank=4", "sample.steps=3")
    code = main(["train", str(sample_project), "--headless", "--resume", "--max-steps", "6"])
    err = capsys.readouterr().err
    assert code == 2
    assert "lora.rank: 8 → 4" in err and "sample.steps" not in err


def test_deferred_step_reports_as_on_cuda_lose_nothing(sample_project: Path) -> None:
    """On CUDA a step's loss is read one step later so the host never waits; force that path here."""
    _set(sample_project, "save.every_n_steps=0", "sample.every_n_steps=0")
    results = {}
    for defer in (False, True):
        seen: list[Event] = []
        trainer = Trainer(sample_project, load_config(sample_project), emit=seen.append, commands=CommandChannel(),
                          max_steps=5)
        trainer.setup()
        trainer.defer_reports = defer
        try:
            trainer.train()
            results[defer] = (trainer.session.lora_state_dict(), seen)
        finally:
            trainer.cleanup()
    (eager_w, eager), (late_w, late) = results[False], results[True]
    assert [e.step for e in late if isinstance(e, StepDone)] == [1, 2, 3, 4, 5]
    assert _losses(late) == _losses(eager)
    assert all(torch.equal(eager_w[k], late_w[k]) for k in eager_w)
    kinds = [type(e).__name__ for e in late]
    assert kinds.index("Finished") > max(i for i, k in enumerate(kinds) if k == "StepDone")


def test_init_lora_is_read_inside_the_project_and_a_mismatch_is_explained(sample_project: Path, tmp_path: Path,
                                                                          monkeypatch, capsys) -> None:
    _set(sample_project, "save.every_n_steps=0", "sample.every_n_steps=0")
    _events(sample_project, max_steps=1)
    import shutil

    shutil.copy(ProjectPaths(sample_project).output / "zxc_toy.safetensors", sample_project / "start.safetensors")
    _set(sample_project, "lora.init_lora=start.safetensors")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative init_lora means inside the project, wherever loratui runs
    assert main(["train", str(sample_project), "--headless", "--max-steps", "1"]) == 0
    _set(sample_project, "lora.rank=4")
    capsys.readouterr()
    assert main(["train", str(sample_project), "--headless", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "lora.init_lora = 'start.safetensors'" in err and "Traceback" not in err
