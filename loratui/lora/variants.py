"""The adapter types by name (``lora.type``), and which one a file's tensors are.

Injection asks :func:`make_adapter` for a module of the configured type;
reading a file asks :func:`kind_of_suffixes` what its tensors describe and
:func:`adapter_for_tensors` for a module of exactly their shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

import torch
from torch import nn

from loratui.lora.dora import DoRAModule
from loratui.lora.layer import AdapterModule, LoRAModule
from loratui.lora.loha import LoHaModule
from loratui.lora.lokr import LoKrModule

ADAPTER_TYPES = ("lora", "dora", "loha", "lokr")
ADAPTER_CLASSES: dict[str, type[AdapterModule]] = {
    "lora": LoRAModule, "dora": DoRAModule, "loha": LoHaModule, "lokr": LoKrModule,
}  # fmt: skip

# The tensor suffixes each type writes (besides ``alpha``); the first group is required.
_REQUIRED = {
    "lora": {"lora_down.weight", "lora_up.weight"},
    "dora": {"lora_down.weight", "lora_up.weight", "dora_scale"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},
}
_LOKR_W2 = ({"lokr_w2"}, {"lokr_w2_a", "lokr_w2_b"})
KNOWN_SUFFIXES = frozenset({"alpha", "lokr_w1", *_LOKR_W2[0], *_LOKR_W2[1]}.union(*_REQUIRED.values()))
# LyCORIS layouts loratui does not build (Tucker cores, a factorised w1, LoCon's mid conv, DoRA on LoHa/LoKr).
UNSUPPORTED_HINT = (
    "loratui reads plain LoRA, DoRA, LoHa and LoKr as loratui and LyCORIS write them by default; "
    "Tucker/CP cores (hada_t1, lokr_t2, lora_mid), a factorised lokr_w1 and DoRA on LoHa/LoKr are not supported"
)


def make_adapter(kind: str, base: nn.Module, rank: int, alpha: float | None, *,
                 generator: torch.Generator | None = None, lokr_factor: int = -1) -> AdapterModule:  # fmt: skip
    """A fresh adapter of type ``kind`` around ``base`` (training starts from the base model)."""
    if kind not in ADAPTER_CLASSES:
        raise ValueError(f"unknown LoRA type {kind!r}; expected one of {', '.join(ADAPTER_TYPES)}")
    if kind == "lokr":
        return LoKrModule(base, rank, alpha, factor=lokr_factor, generator=generator)
    return ADAPTER_CLASSES[kind](base, rank, alpha, generator=generator)  # type: ignore[call-arg]


def kind_of_suffixes(suffixes: Set[str]) -> str | None:
    """The adapter type one module's tensor suffixes describe, or None when they are not a complete known set."""
    present = set(suffixes) - {"alpha"}
    for kind, required in _REQUIRED.items():
        if present == required:
            return kind
    if any(present == {"lokr_w1", *w2} for w2 in _LOKR_W2):
        return "lokr"
    return None


def rank_of(kind: str, tensors: Mapping[str, torch.Tensor]) -> int | None:
    """The rank a module's tensors were made with; None for a LoKr with both factors full."""
    if kind in ("lora", "dora"):
        return int(tensors["lora_down.weight"].shape[0])
    if kind == "loha":
        return int(tensors["hada_w1_b"].shape[0])
    return int(tensors["lokr_w2_b"].shape[0]) if "lokr_w2_b" in tensors else None


def adapter_for_tensors(base: nn.Module, kind: str, tensors: Mapping[str, torch.Tensor],
                        alpha: float) -> AdapterModule:  # fmt: skip
    """An adapter shaped like a file's tensors for ``base`` (their values are loaded by the network)."""
    rank = rank_of(kind, tensors)
    if kind == "lokr":
        w1 = tensors["lokr_w1"]
        return LoKrModule(base, rank or 1, alpha, w1_shape=(int(w1.shape[0]), int(w1.shape[1])),
                          full_w2="lokr_w2" in tensors)  # fmt: skip
    assert rank is not None
    if kind == "dora":
        # A magnitude that is not [1, in...] is LyCORIS' output-axis layout.
        return DoRAModule(base, rank, alpha, wd_on_output=int(tensors["dora_scale"].shape[0]) != 1)
    return make_adapter(kind, base, rank, alpha)


# LyCORIS' built-in presets nearest each lora.preset. "attn-mlp" is exactly kohya's default
# (every Linear and 1x1 conv in the transformer blocks, CLIP attention and MLP); "full" adds the
# resnet and sampler blocks as "all" does, plus conv_in, conv_out and the time embedding; "attn-only"
# finds the attention of sd-scripts' own UNets (class CrossAttention), not diffusers' (class Attention).
LYCORIS_PRESETS = {"attention": "attn-only", "attention+ff": "attn-mlp", "all": "full"}


def network_args(kind: str, preset: str = "attention+ff", *, rank: int | None = None, alpha: float | None = None,
                 lokr_factor: int = -1) -> tuple[str, dict[str, str]]:
    """(``ss_network_module``, ``ss_network_args``) as kohya's metadata records a run of this type.

    The args are only keys sd-scripts' ``networks.lora`` or ``lycoris.kohya.create_network`` read, with
    values as strings like ``--network_args`` gives them, so ``create_network(..., **args)`` rebuilds the
    network. Loaders go by tensor names; these tell a person and those tools how the file was trained.
    """
    conv = {"conv_dim": str(rank), "conv_alpha": f"{alpha:g}"} if preset == "all" and rank is not None \
        and alpha is not None else {}
    if kind == "lora":
        return "networks.lora", conv
    args = {"algo": "lora" if kind == "dora" else kind, "preset": LYCORIS_PRESETS.get(preset, "full"), **conv}
    if kind == "dora":
        args.update(dora_wd="True", wd_on_output="False")
    if kind == "lokr":
        args["factor"] = str(lokr_factor)
    return "lycoris.kohya", args
