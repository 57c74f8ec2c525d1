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
from loratui.lora.inject import UNET_PRESETS, expected_module_count, inject_lora
from loratui.lora.layer import LoRAModule, LoRANetwork

__all__ = [
    "UNET_PRESETS",
    "LoRAFile",
    "LoRAFileError",
    "LoRAModule",
    "LoRANetwork",
    "LoRAWeights",
    "apply_lora_file",
    "convert_lora_file",
    "expected_module_count",
    "inject_lora",
    "load_lora_file",
    "save_diffusers",
    "save_kohya",
]
