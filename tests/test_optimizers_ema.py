"""Prodigy, schedule-free AdamW and the EMA of the weights: resumes that are exact, an average that is
what its definition says, and clear messages when a package is missing."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loratui.cli import main
from loratui.commands import Command, CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.engine.runner import run_training
from loratui.engine.trainer import Trainer
from loratui.events import Event, StepDone
from loratui.project import ProjectPaths

torch.set_num_threads(1)


def _small(project: Path, *assignments: str) -> Path:
    """The sample project cut to 4 images (one batch of 2 per step), with the given settings."""
    images = project / "images"
    shutil.rmtree(images / "2_closeups")
    for path in sorted(images.glob("toy_*"))[8:]:
        path.unlink()
    cfg = load_config(project)
    for a in ("save.every_n_steps=0", "sample.every_n_steps=0", "train.warmup_steps=0",
              "train.lr_scheduler=constant", *assignments):
        apply_override(cfg, a)
    save_config(project, cfg)
    return project


def _run(project: Path, *, max_steps: int, resume: bool = False, stop_at: int | None = None) -> dict[int, float]:
    losses: dict[int, float] = {}
    commands = CommandChannel()

    def emit(event: Event) -> None:
        if isinstance(event, StepDone):
            losses[event.step] = event.loss
            if event.step == stop_at:
                commands.send(Command.STOP)

    run_training(project, emit=emit, commands=commands, resume=resume, max_steps=max_steps)
    return losses


def _checkpoint(project: Path, step: int, name: str = "lora") -> dict[str, torch.Tensor]:
    return load_file(str(ProjectPaths(project).checkpoints / f"step-{step:06d}" / f"{name}.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("optimizer, extra", [
    ("prodigy", ("train.learning_rate=1.0", "train.ema_decay=0.9")),
    # Samples every other step in the interrupted run only: the eval/train switch around them must
    # leave the training weights exactly as they were, or the two runs part ways.
    ("adamw_schedulefree", ("train.learning_rate=0.01",)),
])
def test_stop_and_resume_is_bit_exact(sample_project: Path, tmp_path: Path, optimizer: str,
                                      extra: tuple[str, ...]) -> None:
    project = _small(sample_project, f"train.optimizer={optimizer}", *extra)
    straight = tmp_path / "straight"
    shutil.copytree(project, straight)
    total = 4
    expected = _run(straight, max_steps=total)
    if optimizer == "adamw_schedulefree":
        cfg = load_config(project)
        apply_override(cfg, "sample.every_n_steps=1")
        apply_override(cfg, "sample.steps=1")
        save_config(project, cfg)
    first = _run(project, max_steps=total, stop_at=2)
    second = _run(project, max_steps=total, resume=True)
    assert {**first, **second} == expected
    _assert_same(_checkpoint(straight, total), _checkpoint(project, total))
    names = {p.stem for p in (ProjectPaths(project).checkpoints / f"step-{total:06d}").glob("*.safetensors")}
    if optimizer == "prodigy":
        _assert_same(_checkpoint(straight, total, "ema"), _checkpoint(project, total, "ema"))
        assert "ema" in names
    else:
        _assert_same(_checkpoint(straight, total, "lora_train"), _checkpoint(project, total, "lora_train"))
        # The file holds schedule-free's average, which is not the point it trains at.
        trained, averaged = _checkpoint(project, total, "lora_train"), _checkpoint(project, total)
        assert any(not torch.equal(trained[k], averaged[k]) for k in trained if k.endswith("up.weight"))
    print(f"{optimizer}: stopped at 2, resumed to {total}; losses and weights identical")


def test_ema_equals_its_definition_after_n_steps(sample_project: Path) -> None:
    decay = 0.8
    project = _small(sample_project, f"train.ema_decay={decay}", "train.learning_rate=0.01", "save.precision=fp32")
    trainer = Trainer(project, load_config(project), emit=lambda e: None, commands=CommandChannel(), max_steps=3)
    trainer.setup()
    try:
        s = trainer.session
        named = [kp for net in s.networks.values() for kp in net.named_parameters()]
        expected = {k: p.detach().float().clone() for k, p in named}
        for _ in range(3):
            trainer._optimizer_step()
            for k, p in named:
                expected[k] = decay * expected[k] + (1 - decay) * p.detach().float()
        assert all(v.dtype == torch.float32 for v in s.ema.shadow.values())
        for k, v in expected.items():
            torch.testing.assert_close(s.ema.shadow[k], v, rtol=1e-6, atol=1e-7)
        # The average moved away from both the start and the current weights.
        assert any(not torch.allclose(s.ema.shadow[k], p.detach()) for k, p in named if "up" in k)
        path = trainer.export()
        trainer.save_checkpoint("request")
    finally:
        trainer.cleanup()
    raw, ema = load_file(str(path)), load_file(str(path.with_name(path.stem + "-ema.safetensors")))
    assert raw.keys() == ema.keys()
    for k, v in expected.items():
        torch.testing.assert_close(ema[k], v)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if k.endswith("up.weight"))
    # `loratui export --ema` writes the same file again from the checkpoint.
    path.with_name(path.stem + "-ema.safetensors").unlink()
    assert main(["export", str(project), "--ema"]) == 0
    again = load_file(str(path.with_name(path.stem + "-ema.safetensors")))
    assert all(torch.equal(again[k], ema[k]) for k in ema)


@pytest.mark.parametrize("optimizer, package", [("prodigy", "prodigyopt"), ("adamw_schedulefree", "schedulefree")])
def test_a_missing_optimizer_package_is_named_with_the_install_command(
        sample_project: Path, monkeypatch, capsys, optimizer: str, package: str) -> None:
    project = _small(sample_project, f"train.optimizer={optimizer}")
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    assert main(["train", str(project), "--headless", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert f"pip install {package}" in err and "Traceback" not in err


def test_prodigy_with_an_adamw_learning_rate_is_warned_about(sample_project: Path, capsys) -> None:
    from loratui.config import ProjectConfig
    from loratui.engine.optimizers import optimizer_advice

    cfg = ProjectConfig()
    cfg.train.optimizer = "prodigy"
    assert "set 1.0" in optimizer_advice(cfg)[0]
    cfg.train.learning_rate = 1.0
    assert optimizer_advice(cfg) == []
    from loratui.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="adamw_schedulefree"):
        config_from_dict({"train": {"optimizer": "adamw_schedulefree", "lr_scheduler": "cosine"}})


def test_ema_stands_still_on_a_skipped_step() -> None:
    from loratui.engine.ema import LoraEMA

    weight = torch.nn.Parameter(torch.zeros(4))
    ema = LoraEMA([("w", weight)], 0.5)
    with torch.no_grad():
        weight.fill_(2.0)
    ema.update(torch.tensor(1.0))  # the optimizer skipped a non-finite update: nothing to average in
    assert torch.equal(ema.shadow["w"], torch.zeros(4))
    ema.update(torch.tensor(0.0))
    assert torch.equal(ema.shadow["w"], torch.ones(4))
    with ema.applied():
        assert torch.equal(weight.detach(), torch.ones(4))
    assert torch.equal(weight.detach(), torch.full((4,), 2.0))
