"""The optimizers beyond AdamW: Prodigy and schedule-free AdamW, from their own packages.

Both keep everything a resume needs in ``state_dict()`` (Prodigy its running step-size estimate
``d`` in the param groups; schedule-free its ``z`` sequence and weight sums), so a checkpoint of
the optimizer is enough for a bit-exact resume.

Schedule-free trains on one point (``y``) and evaluates at another (``x``, the average it is
named for); the switch between them (``optimizer.eval()`` / ``.train()``) is an interpolation that
does not round-trip exactly in floating point. ``averaged_weights`` therefore never calls
``train()`` to come back: it keeps the training weights aside and puts them back bit for bit.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from loratui.config import ConfigError

if TYPE_CHECKING:
    from loratui.config import ProjectConfig

# Below this, a Prodigy learning rate is almost surely an AdamW habit: Prodigy multiplies its own
# estimated step size by it, so 1e-4 makes training ten thousand times slower than intended.
_PRODIGY_LOW_LR = 0.1


def _missing(package: str, optimizer: str) -> ConfigError:
    return ConfigError(
        f"train.optimizer = \"{optimizer}\" needs the {package} package: `pip install {package}` "
        f"(or `pip install 'loratui[optimizers]'`), or choose another train.optimizer.")


def build_optimizer(cfg: ProjectConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """Prodigy or schedule-free AdamW over ``groups`` (each with its own ``lr``)."""
    t = cfg.train
    if t.optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise _missing("prodigyopt", "prodigy") from None
        if any(g["lr"] <= 0 for g in groups):
            raise ConfigError("train.optimizer = \"prodigy\" needs learning rates above 0 (1.0 is the usual "
                              "value; it multiplies the step size Prodigy finds).")
        # Prodigy's authors recommend bias correction for diffusion models and the warm-up safeguard
        # whenever the schedule warms up. It prints a line about weight decay; keep the console clean.
        with contextlib.redirect_stdout(io.StringIO()):
            return Prodigy(groups, weight_decay=t.weight_decay, use_bias_correction=True,
                           safeguard_warmup=t.warmup_steps > 0)
    if t.optimizer == "adamw_schedulefree":
        try:
            from schedulefree import AdamWScheduleFree
        except ImportError:
            raise _missing("schedulefree", "adamw_schedulefree") from None
        # Schedule-free replaces the LR schedule; its own warm-up takes train.warmup_steps.
        optimizer = AdamWScheduleFree(groups, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps)
        optimizer.train()  # it starts in eval mode and refuses to step there
        return optimizer
    raise ValueError(t.optimizer)  # a caller bug: AdamW is built in engine/build.py


def optimizer_advice(cfg: ProjectConfig) -> list[str]:
    """Warnings about learning rates that do not fit the chosen optimizer's convention."""
    t = cfg.train
    out = []
    if t.optimizer == "prodigy":
        low = [f"{name} = {value:g}" for name, value in (("train.learning_rate", t.learning_rate),
                                                          ("train.text_encoder_lr", t.text_encoder_lr))
               if value < _PRODIGY_LOW_LR and (name == "train.learning_rate" or cfg.lora.train_text_encoder)]
        if low:
            out.append(f"train.optimizer = \"prodigy\" finds its own step size and multiplies it by the learning "
                       f"rate, so {' and '.join(low)} will train very slowly; set 1.0 (0.5 for the text encoder "
                       "to train it more gently).")
    return out


def is_schedule_free(optimizer: Any) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)
    return bool(inner.param_groups) and "train_mode" in inner.param_groups[0]


@contextlib.contextmanager
def averaged_weights(optimizer: Any, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Inside, the LoRA holds the weights to sample, evaluate and save; afterwards exactly the
    training weights again. A no-op for optimizers without a separate evaluation point."""
    if not is_schedule_free(optimizer):
        yield
        return
    inner = getattr(optimizer, "optimizer", optimizer)
    kept = [p.detach().clone() for p in params]
    inner.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, saved in zip(params, kept):
                p.copy_(saved)
        for group in inner.param_groups:
            group["train_mode"] = True
