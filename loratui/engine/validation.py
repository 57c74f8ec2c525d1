"""When to measure the validation loss, what it cost, and which step was best.

The loss itself is :func:`loratui.engine.evaluate.evaluate_items`; this module
decides the interval (``validation.every_n_steps``, or one that keeps the
evaluations under 5% of the run), keeps the best value for ``save.keep_best``
and turns each measurement into a :class:`ValidationDone` event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loratui.engine.evaluate import BANDS, TIMESTEPS_PER_BAND, evaluate_items
from loratui.events import ValidationDone

if TYPE_CHECKING:
    from loratui.engine.session import TrainingSession

COST_BUDGET = 0.04
"""Share of the run's time the automatic interval allows for evaluations: under 5% with the final one."""
MAX_EVALUATIONS = 40
"""The automatic interval never evaluates more often than this many times a run: enough points to plot."""
FORWARD_PER_TRAINING_IMAGE = 3.0
"""A training image costs a forward and a backward pass, about three forwards."""


def auto_interval(*, held_out: int, total_steps: int, images_per_step: int) -> int:
    """Steps between evaluations so that they cost under COST_BUDGET of the run, estimated from the
    number of UNet forward passes (each held-out image is run once per evaluated timestep)."""
    forwards = held_out * BANDS * TIMESTEPS_PER_BAND
    cost_in_steps = forwards / (FORWARD_PER_TRAINING_IMAGE * max(1, images_per_step))
    return max(1, math.ceil(cost_in_steps / COST_BUDGET), math.ceil(total_steps / MAX_EVALUATIONS))


@dataclass
class Validation:
    """The validation state of one run (restored from a checkpoint on resume)."""

    session: TrainingSession
    interval: int
    automatic: bool
    seed: int
    best_step: int | None = None
    best_loss: float | None = None
    last_step: int | None = None
    eval_seconds: float = 0.0

    @classmethod
    def create(cls, session: TrainingSession, total_steps: int) -> Validation | None:
        cfg = session.cfg
        if not session.held_out:
            return None
        every = cfg.validation.every_n_steps
        images_per_step = cfg.train.batch_size * cfg.train.grad_accum * session.accelerator.num_processes
        interval = every or auto_interval(held_out=len(session.held_out), total_steps=total_steps,
                                          images_per_step=images_per_step)
        return cls(session, interval, automatic=every == 0, seed=cfg.train.seed)

    def due(self, step: int) -> bool:
        return step > 0 and step % self.interval == 0 and step != self.last_step

    def restore(self, best_step: int | None, best_loss: float | None) -> None:
        self.best_step, self.best_loss = best_step, best_loss

    def evaluate(self, step: int, *, run_seconds: float, mean_step_s: float | None) -> tuple[ValidationDone, bool]:
        """Measure now; returns the event and whether this step is the new best."""
        result = evaluate_items(self.session, self.session.held_out, seed=self.seed)
        self.last_step = step
        self.eval_seconds += result.seconds
        improved = self.best_loss is None or result.loss < self.best_loss
        if improved:
            self.best_step, self.best_loss = step, result.loss
        if self.automatic and mean_step_s:
            # The estimate counted forward passes; the clock has the last word (only ever less often).
            measured = math.ceil(result.seconds / (COST_BUDGET * mean_step_s))
            self.interval = max(self.interval, measured)
        assert self.best_step is not None and self.best_loss is not None
        event = ValidationDone(
            step=step, val_loss=result.loss, band_losses=result.band_losses, images=result.images,
            eval_time_s=result.seconds, cost_share=self.eval_seconds / max(run_seconds, 1e-9),
            best_step=self.best_step, best_val_loss=self.best_loss)
        return event, improved

    def describe(self) -> str:
        how = "automatic, under 5% of the run" if self.automatic else "validation.every_n_steps"
        return (f"validation loss on {len(self.session.held_out)} held-out image(s) every {self.interval} steps "
                f"({how}) and at the end: {BANDS} timestep bands × {TIMESTEPS_PER_BAND}, fixed noise")
