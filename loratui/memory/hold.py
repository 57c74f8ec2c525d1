"""How the engine holds a frozen base model: the one place ``build.py`` asks.

In order: :func:`check_memory_options` refuses what cannot work before any
image is encoded; :func:`load_device` says where the denoiser is loaded (on
the host when it will be stored smaller or swapped, so a 24 GB card never
holds the whole bf16 model); :func:`store_base` stores the blocks' Linear
weights in ``model.base_precision``, one layer at a time on the GPU;
:func:`place_model` (after the LoRA is injected) starts block swapping and puts
everything else on the device; :func:`enable_checkpointing` turns on gradient
checkpointing, with activation offload when asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loratui.config import ConfigError, ProjectConfig
from loratui.memory.block_swap import BlockSwap, frozen_slots, move_except, slot_bytes
from loratui.memory.blocks import transformer_blocks
from loratui.memory.precision import PRECISIONS
from loratui.memory.stored import block_linears, store_linear

log = logging.getLogger("loratui")
StatusFn = Callable[..., None]


def effective_precision(cfg: ProjectConfig) -> str:
    """``model.base_precision``, with the older ``model.base_weights = "float8"`` read as ``fp8``."""
    precision = cfg.model.base_precision
    if precision == "auto" and cfg.model.base_weights == "float8":
        return "fp8"
    return precision


def host_memory_available() -> int | None:
    """Bytes the kernel says a new allocation can have (MemAvailable), or None where /proc has no answer."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _library_present(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def check_memory_options(cfg: ProjectConfig, *, family: str, block_count: int, cuda: bool,
                         processes: int = 1) -> None:
    """Refuse settings that cannot work, with what to change. ``block_count`` 0 means a UNet family."""
    precision = effective_precision(cfg)
    m, t = cfg.model, cfg.train
    if m.base_weights == "float8" and m.base_precision not in ("auto", "fp8"):
        raise ConfigError(f"model.base_weights = \"float8\" and model.base_precision = \"{m.base_precision}\" "
                          "disagree; remove model.base_weights (model.base_precision replaces it).")
    if precision != "auto" and not block_count:
        field_name = "base_weights" if m.base_precision == "auto" else "base_precision"
        value = m.base_weights if m.base_precision == "auto" else m.base_precision
        raise ConfigError(f"model.{field_name} = \"{value}\" stores a transformer's blocks (SD3, FLUX and the "
                          f"other transformer families); {m.base} is {family}, a UNet. Set it to \"auto\".")
    if precision == "nf4":
        if not cuda:
            raise ConfigError("model.base_precision = \"nf4\" needs an NVIDIA GPU (bitsandbytes' NF4 is CUDA "
                              "only here). On this machine use \"int4\": the same 4 bits a weight.")
        if not _library_present("bitsandbytes"):
            raise ConfigError("model.base_precision = \"nf4\" needs bitsandbytes: `pip install -e '.[quant]'` "
                              "(or `pip install bitsandbytes`), or use \"int4\".")
    swap = t.blocks_to_swap
    if swap:
        if not block_count:
            raise ConfigError(f"train.blocks_to_swap = {swap} streams a transformer's blocks; {m.base} is {family}, "
                              "a UNet without them. Set train.blocks_to_swap = 0.")
        if swap > block_count:
            raise ConfigError(f"train.blocks_to_swap = {swap}, but this {family} transformer has {block_count} "
                              f"blocks; set it to at most {block_count} (fewer is faster).")
        if processes > 1:
            raise ConfigError(f"train.blocks_to_swap = {swap} with {processes} processes is not supported yet; "
                              "set train.num_processes = 1 or train.blocks_to_swap = 0.")
        if t.compile:
            raise ConfigError("train.compile cannot trace block swapping's copies; turn one of train.compile and "
                              "train.blocks_to_swap off.")
    if t.activation_offload and not t.gradient_checkpointing:
        raise ConfigError("train.activation_offload moves what gradient checkpointing keeps to host memory; set "
                          "train.gradient_checkpointing = true as well (or turn activation_offload off).")


def check_host_memory(cfg: ProjectConfig, needed: int, available: int | None) -> None:
    if available is None or needed <= available:
        return
    gib = 2 ** 30
    raise ConfigError(
        f"train.blocks_to_swap = {cfg.train.blocks_to_swap} keeps {needed / gib:.1f} GiB of blocks in host memory, "
        f"but this machine has {available / gib:.1f} GiB free. Lower train.blocks_to_swap, store the base smaller "
        "(model.base_precision = \"int8\" halves it), or use a machine with more RAM.")


def load_device(cfg: ProjectConfig, device: torch.device) -> torch.device:
    """Where the denoiser is loaded: the host when it is stored smaller or swapped, else the device."""
    if effective_precision(cfg) != "auto" or cfg.train.blocks_to_swap:
        return torch.device("cpu")
    return device


@dataclass
class HeldBase:
    """What build.py needs to know of how the base is held."""
    precision: str
    blocks: list[nn.Module]
    swapped: int
    places_itself: bool  # the denoiser was placed here: accelerate must not move it
    swap: BlockSwap | None = None


def store_base(cfg: ProjectConfig, model: Any, device: torch.device, status: StatusFn, *,
               processes: int = 1) -> HeldBase:
    """Check the options, then store the frozen blocks in ``model.base_precision``; before LoRA injection."""
    transformer = model.unet
    blocks = transformer_blocks(transformer)
    check_memory_options(cfg, family=model.family, block_count=len(blocks), cuda=device.type == "cuda",
                         processes=processes)
    precision = effective_precision(cfg)
    swapped = cfg.train.blocks_to_swap
    held = HeldBase(precision, blocks, swapped, places_itself=load_device(cfg, device) != device)
    if precision != "auto":
        on_host = {id(b) for b in blocks[len(blocks) - swapped:]} if swapped else set()
        before = after = 0
        for block in blocks:
            keep = torch.device("cpu") if id(block) in on_host else device
            for layer in list(block_linears(block)):
                before += store_linear(layer, precision, work_device=device, keep_device=keep)
                after += layer.stored_bytes()
        status(f"transformer blocks stored as {precision} ({PRECISIONS[precision].bits} bits a weight): "
               f"{_size(before)} -> {_size(after)}")
    if swapped:
        # Checked now, before any image is encoded; the pinned copies are made after LoRA injection.
        needed = sum(slot_bytes(frozen_slots(b)) for b in blocks[len(blocks) - swapped:])
        check_host_memory(cfg, needed, host_memory_available())
    return held


def place_model(held: HeldBase, cfg: ProjectConfig, model: Any, device: torch.device, status: StatusFn) -> None:
    """After LoRA injection: start block swapping, then put the rest of the denoiser on the device."""
    transformer = model.unet
    if held.swapped:
        held.swap = BlockSwap(held.blocks, held.swapped, device)
        status(f"block swap: the last {held.swapped} of {len(held.blocks)} blocks wait in host memory "
               f"({_size(held.swap.host_bytes)}) and stream to the {device.type} ahead of use")
    if held.places_itself:
        swap = held.swap
        move_except(transformer, device, skip=lambda m: swap is not None and swap.is_swapped(m))


def _size(n: int) -> str:
    if n >= 2**28:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def enable_checkpointing(cfg: ProjectConfig, unet: Any, status: StatusFn) -> None:
    from loratui.engine.grad_checkpoint import enable_unet_checkpointing

    every = cfg.train.gradient_checkpointing_every
    if not cfg.train.activation_offload:
        enable_unet_checkpointing(unet, every)
        return
    from loratui.memory.offload import enable_offloaded_checkpointing

    enable_offloaded_checkpointing(unet, every)
    status("activation offload: the checkpointed block inputs wait in host memory until the backward pass")
