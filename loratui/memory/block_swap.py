"""Block swapping (``train.blocks_to_swap``): the last N transformer blocks live in host memory.

Their frozen tensors (base weights, stored or plain, norms, biases) are kept in
pinned host memory and copied to the GPU just before each block runs, on a side
stream, one block ahead, with an event the compute stream waits on so a block
never starts before its weights have arrived. The base is frozen, so nothing
is ever copied back: releasing a block only drops its device copy (musubi-
tuner's host-to-device-only swap; sd-scripts swaps both ways). The LoRA factors
of those blocks stay on the device, where the optimizer updates them.

The backward pass needs the blocks again in reverse order. A gradient hook on
each block's outputs (and, under gradient checkpointing, the recomputation
itself) loads the block before its backward runs and fetches the one before
it. Parameters are exchanged by ``.data``, so tensors autograd saved in the
forward (a norm's weight, a plain Linear's weight) see the device copy again
when the backward uses them.

On the device at once: the blocks that are not swapped, plus at most two of
the swapped ones (the one computing and the one arriving; the last block stays
from the forward into the backward that starts with it). On a CPU the copies
are plain copies and the results are the same bits as without swapping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from loratui.lora.layer import AdapterModule

# (module, attribute name): a frozen tensor of a block, read afresh at every exchange.
Slot = tuple[nn.Module, str]


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


def frozen_slots(block: nn.Module) -> list[Slot]:
    """Every frozen tensor of a block: parameters that do not train and buffers outside the adapters."""
    slots: list[Slot] = []
    for module in block.modules():
        for name, p in module._parameters.items():
            if p is not None and not p.requires_grad:
                slots.append((module, name))
        if not isinstance(module, AdapterModule):  # an adapter's alpha is tiny and stays with its factors
            slots.extend((module, name) for name, b in module._buffers.items() if b is not None)
    return slots


def slot_bytes(slots: Sequence[Slot]) -> int:
    return sum(_get(s).numel() * _get(s).element_size() for s in slots)


def _get(slot: Slot) -> torch.Tensor:
    module, name = slot
    tensor = module._parameters.get(name)
    return tensor if tensor is not None else module._buffers[name]


def _set(slot: Slot, value: torch.Tensor) -> None:
    _get(slot).data = value


class BlockSwap:
    """Streams the last ``count`` of ``blocks`` from host memory to ``device``; see the module docstring."""

    def __init__(self, blocks: Sequence[nn.Module], count: int, device: torch.device | str, *,
                 streams: bool | None = None) -> None:
        """``streams`` (default: whether ``device`` is CUDA) means pinned host copies, uploads on a side
        stream and events; a test turns it on for a CPU with stand-ins for ``torch.cuda``."""
        if not 0 < count <= len(blocks):
            raise ValueError(f"cannot swap {count} of {len(blocks)} blocks")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" if streams is None else streams
        self.blocks = list(blocks[len(blocks) - count:])
        self.index = {id(b): i for i, b in enumerate(self.blocks)}
        self.slots = [frozen_slots(b) for b in self.blocks]
        self.host: list[list[torch.Tensor]] = []
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.pending: dict[int, tuple[list[torch.Tensor], torch.cuda.Event | None]] = {}
        self.loaded: set[int] = set()
        self.loads = 0
        self._handles: list = []
        for block, slots in zip(self.blocks, self.slots):
            host = []
            for slot in slots:
                tensor = _get(slot).detach().to("cpu")
                if self.cuda:
                    tensor = tensor.pin_memory()
                _set(slot, tensor)
                host.append(tensor)
            self.host.append(host)
            for module in block.modules():
                if isinstance(module, AdapterModule):
                    module.move_adapter(self.device)
            self._handles.append(block.register_forward_pre_hook(self._before))
            self._handles.append(block.register_forward_hook(self._after))

    @property
    def host_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for host in self.host for t in host)

    def is_swapped(self, module: nn.Module) -> bool:
        return id(module) in self.index

    # -- copies -----------------------------------------------------------------

    def _upload(self, i: int) -> list[torch.Tensor]:
        # copy=True: on a CPU too the block gets its own tensors, so the exchange is the same code as on a GPU.
        return [h.to(self.device, non_blocking=True, copy=True) for h in self.host[i]]

    def _issue(self, i: int) -> None:
        if i in self.loaded or i in self.pending or not 0 <= i < len(self.blocks):
            return
        if self.stream is None:
            self.pending[i] = (self._upload(i), None)
            return
        # No wait on the compute stream: the source is pinned host memory that never changes, and the
        # allocator holds freed device copies back until the compute stream is past them (record_stream).
        with torch.cuda.stream(self.stream):
            tensors = self._upload(i)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.pending[i] = (tensors, event)

    def _ensure(self, i: int) -> None:
        if i in self.loaded:
            return
        self._issue(i)
        tensors, event = self.pending.pop(i)
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for t in tensors:
                # Allocated on the side stream, used on this one: the allocator must wait for both.
                t.record_stream(compute)
        for slot, tensor in zip(self.slots[i], tensors):
            _set(slot, tensor)
        self.loaded.add(i)
        self.loads += 1

    def _release(self, i: int) -> None:
        if i not in self.loaded:
            return
        # Frozen weights: the host copy is still exact, so releasing is only dropping the device copy.
        for slot, host in zip(self.slots[i], self.host[i]):
            _set(slot, host)
        self.loaded.discard(i)

    def _arrive_backward(self, i: int) -> None:
        # Blocks after i have finished their backward: drop them first, so no more than two are ever held.
        for j in [j for j in self.loaded if j > i]:
            self._release(j)
        self._ensure(i)
        self._issue(i - 1)

    # -- hooks ------------------------------------------------------------------

    def _before(self, module: nn.Module, args: tuple) -> None:
        i = self.index[id(module)]
        if _in_backward():  # the recomputation of a checkpointed block: its backward follows
            self._arrive_backward(i)
            return
        # In a forward every earlier block is done; what is still here (the last block after a sampling pass,
        # the first after the previous backward) goes before the next one arrives.
        for j in [j for j in self.loaded if j != i]:
            self._release(j)
        self._ensure(i)
        self._issue(i + 1)

    def _after(self, module: nn.Module, args: tuple, output: object) -> None:
        i = self.index[id(module)]
        if _in_backward():
            return
        if torch.is_grad_enabled():
            hook = self._backward_hook(i)
            for tensor in _tensors(output):
                if tensor.requires_grad:
                    tensor.register_hook(hook)
        if i < len(self.blocks) - 1:
            self._release(i)

    def _backward_hook(self, i: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self._arrive_backward(i)
        return hook

    def release_all(self) -> None:
        """Drop every device copy (before sampling or at the end of a run)."""
        for i in list(self.loaded):
            self._release(i)
        self.pending.clear()

    def remove(self) -> None:
        self.release_all()
        for handle in self._handles:
            handle.remove()


def _tensors(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


def move_except(root: nn.Module, device: torch.device | str, skip: Callable[[nn.Module], bool]) -> None:
    """``root.to(device)`` for every module except those ``skip`` names (and what is inside them)."""
    if skip(root):
        return
    root._apply(lambda t: t.to(device), recurse=False)
    for child in root.children():
        move_except(child, device, skip)
