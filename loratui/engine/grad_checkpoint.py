"""Gradient checkpointing of every Nth UNet unit instead of all of them.

diffusers checkpoints all or nothing: each resnet and transformer block in a
UNet block whose ``gradient_checkpointing`` flag is set goes through
``_gradient_checkpointing_func``. We hand the UNet a function that counts those
calls in forward order and recomputes only every Nth unit; the others keep
their activations as usual. N = 1 is diffusers' own behaviour (least memory),
N = 2 keeps half the activations and saves half the recomputation, and so on,
so a card that almost fits a run without checkpointing pays only for what it
lacks. The order of calls is the same at every step, so the same units are
recomputed every step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


class EveryNth:
    """``_gradient_checkpointing_func`` that recomputes calls 0, N, 2N, … of each forward."""

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"gradient checkpointing interval must be at least 1, not {every}")
        self.every = every
        self.calls = 0

    def reset(self, *_: Any, **__: Any) -> None:
        self.calls = 0

    def __call__(self, module: torch.nn.Module, *args: Any) -> Any:
        index = self.calls
        self.calls += 1
        if index % self.every:
            return module(*args)
        # Non-reentrant: works when only LoRA weights need grads and the input does not.
        return checkpoint(module.__call__, *args, use_reentrant=False)


def enable_unet_checkpointing(unet: Any, every: int = 1) -> EveryNth:
    """Turn on gradient checkpointing of every ``every``-th unit of a diffusers UNet."""
    func = EveryNth(every)
    if every == 1:
        unet.enable_gradient_checkpointing()  # diffusers' own path: nothing for torch.compile to trace
        return func
    unet.enable_gradient_checkpointing(gradient_checkpointing_func=func)
    # Counting restarts at each forward; the backward's recomputation does not call func.
    unet.register_forward_pre_hook(func.reset)
    return func
