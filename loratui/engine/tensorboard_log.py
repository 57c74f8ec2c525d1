"""``logging.tensorboard = true``: the same events, also written for TensorBoard in ``logs/tensorboard/``.

kohya, OneTrainer and SimpleTuner users look at TensorBoard out of habit.
This is an event sink beside the metrics writer; ``metrics.jsonl`` stays the
record everything else reads (the dashboard, resume, the advisor).
TensorBoard is optional: ``pip install tensorboard``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loratui.events import Event, SampleReady, StepDone, ValidationDone
from loratui.loss_smoothing import LossSmoother

MISSING = ("logging.tensorboard = true, but TensorBoard is not installed: `pip install tensorboard` (or "
           "`pip install 'loratui[tensorboard]'`). Training goes on; logs/metrics.jsonl has every number.")


class TensorboardLog:
    """Training loss (raw and smoothed), learning rate, validation loss per band, and sample images."""

    def __init__(self, log_dir: Path, writer: Any) -> None:
        self.log_dir = log_dir
        self.writer = writer
        self.smoother = LossSmoother()

    def __call__(self, event: Event) -> None:
        w = self.writer
        if isinstance(event, StepDone):
            w.add_scalar("loss/train", event.loss, event.step)
            w.add_scalar("loss/train_smoothed", self.smoother.update(event.loss), event.step)
            w.add_scalar("lr", event.lr, event.step)
            w.add_scalar("time/step_s", event.step_time_s, event.step)
        elif isinstance(event, ValidationDone):
            w.add_scalar("loss/validation", event.val_loss, event.step)
            for band, value in event.band_losses.items():
                w.add_scalar(f"validation/{band}", value, event.step)
            w.flush()
        elif isinstance(event, SampleReady):
            import numpy as np
            from PIL import Image

            with Image.open(event.path) as picture:
                pixels = np.asarray(picture.convert("RGB"))
            w.add_image(f"samples/{Path(event.path).stem}", pixels, event.step, dataformats="HWC")
            w.add_text(f"samples/{Path(event.path).stem}", event.prompt, event.step)
            w.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(log_dir: Path) -> TensorboardLog | None:
    """A writer into ``log_dir``, or None when TensorBoard is not installed (the caller says so)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return TensorboardLog(log_dir, SummaryWriter(str(log_dir), flush_secs=30))
