"""Activation offload (``train.activation_offload``): checkpointed block inputs wait in host memory.

Gradient checkpointing keeps only each block's inputs between the forward and
the backward pass; at 1024 px that is still a 4096 × 3072 tensor per FLUX
block, 1.4 GB over 57 blocks at batch 1, and more for Qwen-Image's 60 blocks
or a larger batch. With offload those inputs are copied to pinned host memory
as the forward passes them and back just before the block is recomputed.

It has to be the reentrant form of ``torch.utils.checkpoint``: that one saves
the block's inputs through ``save_for_backward``, which the saved-tensor hooks
below can move; the non-reentrant form keeps them in a closure no hook sees.
A tensor that requires grad goes in with every block, so the LoRA factors
inside a block still get their gradients when its inputs need none.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


class OffloadedCheckpoint:
    """``_gradient_checkpointing_func`` that recomputes calls 0, N, 2N, … and keeps their inputs on the host."""

    def __init__(self, every: int = 1, *, pin_memory: bool | None = None) -> None:
        if every < 1:
            raise ValueError(f"gradient checkpointing interval must be at least 1, not {every}")
        self.every = every
        self.calls = 0
        self.pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.offloaded_bytes = 0  # in the last forward; what the device did not have to hold
        self._anchor = torch.empty(0, requires_grad=True)
        self._trainable: dict[int, bool] = {}

    def reset(self, *_: Any, **__: Any) -> None:
        self.calls = 0
        self.offloaded_bytes = 0

    def _pack(self, tensor: torch.Tensor) -> tuple[torch.device, torch.Tensor]:
        host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=self.pin)
        # Asynchronous into pinned memory: the copy is queued on the stream before anything that could reuse
        # the tensor's device memory, and the copy back is queued on the same stream after it.
        host.copy_(tensor, non_blocking=self.pin)
        self.offloaded_bytes += tensor.numel() * tensor.element_size()
        return tensor.device, host

    def _unpack(self, packed: tuple[torch.device, torch.Tensor]) -> torch.Tensor:
        device, host = packed
        return host.to(device, non_blocking=self.pin)

    def __call__(self, module: torch.nn.Module, *args: Any) -> Any:
        index = self.calls
        self.calls += 1
        if index % self.every:
            return module(*args)
        inputs_need_grad = any(t.requires_grad for t in _tensors(args))
        if not inputs_need_grad and not self._trains(module):
            return module(*args)  # nothing in it needs a gradient, so autograd keeps nothing of it anyway
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            return checkpoint(_run, module, self._anchor, *args, use_reentrant=True)

    def _trains(self, module: torch.nn.Module) -> bool:
        key = id(module)
        if key not in self._trainable:
            self._trainable[key] = any(p.requires_grad for p in module.parameters())
        return self._trainable[key]


def _tensors(args: Any) -> list[torch.Tensor]:
    if isinstance(args, torch.Tensor):
        return [args]
    if isinstance(args, (tuple, list)):
        return [t for a in args for t in _tensors(a)]
    return []


def _run(module: torch.nn.Module, _anchor: torch.Tensor, *args: Any) -> Any:
    return module(*args)


def enable_offloaded_checkpointing(model: Any, every: int = 1) -> OffloadedCheckpoint:
    """Gradient checkpointing of every ``every``-th unit of a diffusers model, with its inputs on the host."""
    func = OffloadedCheckpoint(every)
    model.enable_gradient_checkpointing(gradient_checkpointing_func=func)
    model.register_forward_pre_hook(func.reset)
    return func
