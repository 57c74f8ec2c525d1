"""Our own LoRA and its LyCORIS variants (DoRA, LoHa, LoKr): layers, injection by preset, files, inspection, merging."""

from __future__ import annotations

from loratui.lora.fileformat import (
    LoRAFile,
    LoRAFileError,
    LoRAWeights,
    convert_lora_file,
    load_lora_file,
    save_diffusers,
    save_kohya,
)
from loratui.lora.continue_from import apply_lora_file
from loratui.lora.inject import UNET_PRESETS, expected_module_count, inject_from_file, inject_lora
from loratui.lora.inspect import inspect_lora_file, render_inspection
from loratui.lora.dora import DoRAModule
from loratui.lora.layer import AdapterModule, LoRAModule, LoRANetwork
from loratui.lora.loha import LoHaModule
from loratui.lora.lokr import LoKrModule
from loratui.lora.merge import bake_networks, merge_networks, unmerge_networks
from loratui.lora.variants import ADAPTER_TYPES, make_adapter

__all__ = [
    "ADAPTER_TYPES",
    "UNET_PRESETS",
    "AdapterModule",
    "DoRAModule",
    "LoHaModule",
    "LoKrModule",
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
    "make_adapter",
    "merge_networks",
    "render_inspection",
    "save_diffusers",
    "save_kohya",
    "unmerge_networks",
]
