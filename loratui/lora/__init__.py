"""Our own LoRA: the layer, injection by preset, kohya/diffusers files, inspection and merging."""

from __future__ import annotations

from loratui.lora.fileformat import (
    LoRAFile,
    LoRAFileError,
    LoRAWeights,
    apply_lora_file,
    convert_lora_file,
    load_lora_file,
    save_diffusers,
    save_kohya,
)
from loratui.lora.inject import UNET_PRESETS, expected_module_count, inject_from_file, inject_lora
from loratui.lora.inspect import inspect_lora_file, render_inspection
from loratui.lora.layer import LoRAModule, LoRANetwork
from loratui.lora.merge import bake_networks, merge_networks, unmerge_networks

__all__ = [
    "UNET_PRESETS",
    "LoRAFile",
    "LoRAFileError",
    "LoRAModule",
    "LoRANetwork",
    "LoRAWeights",
    "apply_lora_file",
    "bake_networks",
    "convert_lora_file",
    "expected_module_count",
    "inject_from_file",
    "inject_lora",
    "inspect_lora_file",
    "load_lora_file",
    "merge_networks",
    "render_inspection",
    "save_diffusers",
    "save_kohya",
    "unmerge_networks",
]
