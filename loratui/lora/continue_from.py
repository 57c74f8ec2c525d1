"""Continuing training from a LoRA file: its weights loaded into the networks a run has injected."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from loratui.lora.fileformat import LoRAFile, _normalise_names, load_lora_file
from loratui.lora.layer import LoRANetwork
from loratui.lora.naming import KOHYA_PREFIX, family_from_metadata
from loratui.lora.safetensors_io import LoRAFileError


def apply_lora_file(lora_file: LoRAFile | str | os.PathLike[str], networks: Mapping[str, LoRANetwork], *,
                    strict: bool = True) -> None:  # fmt: skip
    """Load a file's weights into injected networks, to continue training from an existing LoRA."""
    lora = lora_file if isinstance(lora_file, LoRAFile) else load_lora_file(lora_file)
    family = next(iter(networks.values())).family if networks else None
    if family is not None and lora.family != family:
        stated = family_from_metadata(lora.metadata)
        if stated is not None and stated != family:
            raise ValueError(f"LoRA file {lora.path} was trained on {stated} but the base model is {family}; "
                             "pick a base model of the same family")  # fmt: skip
        lora = LoRAFile(lora.path, lora.format, family, lora.metadata, _normalise_names(lora.modules, family, None))
    _check_kinds(lora, networks)
    sd = lora.state_dict()
    prefixes = {KOHYA_PREFIX[n.component] + "_": n for n in networks.values()}
    used: set[str] = set()
    for prefix, network in prefixes.items():
        # "lora_te_" is a prefix of neither "lora_te1_" nor "lora_te2_", so this split is exact.
        part = {k: v for k, v in sd.items() if k.startswith(prefix)}
        used.update(part)
        network.load_state_dict(_without_untrained_strays(part, network), strict=strict)
    left = sorted({k.partition(".")[0] for k in sd if k not in used})
    if strict and left:
        raise ValueError(
            f"LoRA file {lora.path} has {len(left)} modules no network here takes (e.g. {left[0]}); "
            "turn on text-encoder training or pick the matching base model family"
        )


def _without_untrained_strays(part: dict[str, torch.Tensor], network: LoRANetwork) -> dict[str, torch.Tensor]:
    """Drops modules the network lacks whose up factors are all zero: never trained, they change nothing.
    musubi-tuner's Qwen-Image files hold the last block's text-stream outputs, which nothing reads (so loratui
    gives them no LoRA), and continuing from such a file must not fail on them."""
    strays: dict[str, list[str]] = {}
    for key in part:
        module = key.partition(".")[0]
        if module not in network:
            strays.setdefault(module, []).append(key)
    drop = set()
    for keys in strays.values():
        ups = [part[k] for k in keys if k.endswith(("lora_up.weight", "lora_B.weight"))]
        if ups and all(not bool(t.any()) for t in ups):
            drop.update(keys)
    return {k: v for k, v in part.items() if k not in drop}


def _check_kinds(lora: LoRAFile, networks: Mapping[str, LoRANetwork]) -> None:
    """A file of one adapter type cannot continue a network of another: say which type to set."""
    file_kinds = set(lora.kinds)
    own = set().union(*(n.kinds for n in networks.values())) if networks else set()
    if file_kinds and own and file_kinds != own:
        raise LoRAFileError(
            f"LoRA file {lora.path} is a {'/'.join(sorted(file_kinds))} but this run trains a "
            f"{'/'.join(sorted(own))}; set lora.type = \"{sorted(file_kinds)[0]}\" to continue from it"
        )
    if any("dora_scale" in w.extra and w.extra["dora_scale"].shape[0] != 1 for w in lora.modules.values()):
        raise LoRAFileError(
            f"LoRA file {lora.path} is a DoRA with its magnitude per output channel (LyCORIS' default); loratui "
            "trains it per input channel, so a run cannot continue from it (it still loads for sample and merge)"
        )
