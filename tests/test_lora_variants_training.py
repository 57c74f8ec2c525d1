"""Each adapter type trained on the sample project: the loss falls, the file is LyCORIS', resume guards the type."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loratui.cli import main
from loratui.commands import CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.engine.trainer import Trainer
from loratui.project import ProjectPaths

torch.set_num_threads(1)

FILE_SUFFIXES = {
    "dora": {"lora_down.weight", "lora_up.weight", "dora_scale", "alpha"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    "lokr": {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},
}


def _set(project: Path, *assignments: str) -> None:
    cfg = load_config(project)
    for a in assignments:
        apply_override(cfg, a)
    save_config(project, cfg)


@pytest.fixture(scope="module")
def shared_project(tmp_path_factory) -> Path:
    """One copy of the sample project for the three runs, so the latent cache is filled once."""
    from tests.conftest import SAMPLE_PROJECT

    dst = tmp_path_factory.mktemp("variants") / "sample_project"
    shutil.copytree(SAMPLE_PROJECT, dst, ignore=shutil.ignore_patterns(
        "output", "checkpoints", "samples", "logs", ".cache", ".loratui.lock", "*.py"))
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_a_short_run_lowers_the_fixed_evaluation_loss(shared_project: Path, kind: str) -> None:
    from loratui.engine.evaluate import fixed_eval_loss

    steps = 25
    cfg = load_config(shared_project)
    for item in (f"lora.type={kind}", "train.learning_rate=0.002", "save.every_n_steps=0", "sample.every_n_steps=0"):
        apply_override(cfg, item)
    trainer = Trainer(shared_project, cfg, emit=lambda e: None, commands=CommandChannel(), max_steps=steps)
    trainer.setup()
    try:
        assert trainer.session.networks["unet"].kinds == {kind}
        before = fixed_eval_loss(trainer.session)
        start = time.perf_counter()
        for _ in range(steps):
            trainer._optimizer_step()
        seconds = time.perf_counter() - start
        after = fixed_eval_loss(trainer.session)
    finally:
        trainer.cleanup()
    print(f"{kind}: fixed-noise evaluation loss {before:.4f} -> {after:.4f} after {steps} steps "
          f"({(before - after) / before:.1%} lower, {seconds / steps:.2f} s/step)")
    assert after < before * 0.97


def test_run_writes_a_lycoris_file_and_resume_refuses_a_type_change(sample_project: Path, capsys) -> None:
    _set(sample_project, "lora.type=dora", "save.every_n_steps=2", "sample.every_n_steps=0")
    assert main(["train", str(sample_project), "--headless", "--max-steps", "2"]) == 0
    paths = ProjectPaths(sample_project)
    tensors = load_file(paths.output / "zxc_toy.safetensors")
    assert {k.partition(".")[2] for k in tensors} == FILE_SUFFIXES["dora"]
    _set(sample_project, "lora.type=loha")
    code = main(["train", str(sample_project), "--headless", "--resume", "--max-steps", "4"])
    err = capsys.readouterr().err
    assert code == 2
    assert "lora.type: 'dora' → 'loha'" in err
