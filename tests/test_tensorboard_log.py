"""logging.tensorboard: the training and validation losses, learning rate and samples reach TensorBoard."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
from PIL import Image

from loratui.engine.tensorboard_log import MISSING, open_tensorboard
from loratui.events import SampleReady, StepDone, ValidationDone

pytest.importorskip("tensorboard")


def _step(step: int, loss: float) -> StepDone:
    return StepDone(step=step, total_steps=10, epoch=0, loss=loss, lr=1e-4 * step, step_time_s=0.1,
                    data_time_s=0.01, compute_time_s=0.08, optimizer_time_s=0.01, samples_per_s=10.0, ram_mb=1.0)


def test_losses_rate_and_samples_are_written(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = open_tensorboard(tmp_path / "tensorboard")
    assert board is not None
    for step in range(1, 5):
        board(_step(step, 1.0 / step))
    board(ValidationDone(step=4, val_loss=0.3, band_losses={"t0-499": 0.4, "t500-999": 0.2}, images=2,
                         eval_time_s=0.1, cost_share=0.01, best_step=4, best_val_loss=0.3))
    picture = tmp_path / "00-seed1.png"
    Image.new("RGB", (16, 8), (255, 0, 0)).save(picture)
    board(SampleReady(step=4, path=str(picture), prompt="zxc toy", seed=1))
    board.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/train_smoothed", "lr", "loss/validation", "validation/t0-499"} <= set(tags["scalars"])
    assert [round(e.value, 4) for e in events.Scalars("loss/train")] == [1.0, 0.5, 0.3333, 0.25]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("loss/validation")] == [(4, 0.3)]
    assert [e.step for e in events.Scalars("lr")] == [1, 2, 3, 4]
    image = events.Images("samples/00-seed1")[0]
    assert (image.step, image.width, image.height) == (4, 16, 8)


def test_without_tensorboard_installed_the_run_says_so(monkeypatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert open_tensorboard(tmp_path / "tb") is None
    assert "pip install tensorboard" in MISSING
