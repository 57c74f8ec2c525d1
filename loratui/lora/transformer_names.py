"""LoRA targets and file names of the flow-matching transformers (SD3.x, FLUX.1, Z-Image, Qwen-Image, Chroma,
FLUX.2 klein).

Presets mean what they mean on the UNets:

- ``attention``: the attention projections of every block: q, k, v and the
  output of the image stream and of the text stream (``add_*_proj``,
  ``to_add_out``), SD3's second self-attention (``attn2``), and in FLUX's
  single blocks q, k, v and ``proj_out`` (the output they share with the MLP).
- ``attention+ff``: those plus both streams' feed-forward layers (and the
  single blocks' ``proj_mlp``).
- ``all``: every linear layer inside the blocks, the adaptive-norm
  modulation included; this is what sd-scripts trains on FLUX by default.

Z-Image's blocks (``noise_refiner``, ``context_refiner``, ``layers``) name their
attention ``attention.to_q`` … ``attention.to_out.0`` and their SwiGLU
feed-forward ``feed_forward.w1/w2/w3``; Qwen-Image's dual-stream blocks use the
``attn.`` names above and ``img_mlp``/``txt_mlp`` feed-forwards.

Inside loratui a module is named ``lora_unet_`` + its diffusers path with
underscores. FLUX files are written in Black Forest Labs' module layout, as
sd-scripts writes them and ComfyUI, Forge and diffusers read them: diffusers'
separate q, k, v (and the single blocks' q, k, v, MLP-in) become one fused
``qkv`` (``linear1``) module whose down matrices are stacked and whose up
matrix is block-diagonal, which is exactly the sum of the separate LoRAs.
Chroma's blocks are FLUX's (without the modulation layers) and its files
use the same names, as sd-scripts writes them for ``--model_type chroma``.
"""

from __future__ import annotations

import re

from torch import nn

from loratui.lora.naming import underscore_to_path
from loratui.models.wrapped import unwrap_model

INTERNAL_PREFIX = "lora_unet_"
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "noise_refiner", "context_refiner", "layers")

# FLUX.2's single blocks: one projection makes q, k, v and the MLP input (to_qkv_mlp_proj), one takes the
# attention and MLP outputs back (attn.to_out), as FLUX.1's linear1/linear2 do; both count as attention.
_ATTENTION = re.compile(
    r"attn2?\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out|to_qkv_mlp_proj|to_out)$"
    r"|^proj_out$|^attention\.(to_q|to_k|to_v|to_out\.0)$"
)
_FEED_FORWARD = re.compile(r"(ff|ff_context|img_mlp|txt_mlp)\.net\.(0\.proj|2)$|(ff|ff_context)\.(linear_in|linear_out)$"
                           r"|^proj_mlp$|^feed_forward\.w[123]$")


def internal_name(path: str) -> str:
    return INTERNAL_PREFIX + path.replace(".", "_")


def _in_preset(sub_path: str, preset: str) -> bool:
    if preset == "all":
        return True
    if _ATTENTION.search(sub_path):
        return True
    return preset == "attention+ff" and bool(_FEED_FORWARD.search(sub_path))


# The text stream's own output layers. In the model's very last block nothing reads what they write (Qwen-Image's
# last dual-stream block; SD3 builds its last block without them; FLUX's single blocks read theirs), so a LoRA
# there never gets a gradient: dead weight in the file, and several processes stop on it (DistributedDataParallel
# refuses parameters that produce no loss).
_TEXT_STREAM_OUTPUT = re.compile(r"attn\.to_add_out$|^(ff_context|txt_mlp)\.")


def transformer_targets(root: nn.Module, preset: str) -> list[tuple[str, nn.Module]]:
    """(path, Linear) of every layer the preset trains, in module order; paths relative to ``root``."""
    found = []
    present = [name for name in BLOCK_LISTS if getattr(unwrap_model(root), name, None) is not None]
    for list_name in present:
        blocks = getattr(unwrap_model(root), list_name)
        for index, block in enumerate(blocks):
            final = list_name == present[-1] and index == len(blocks) - 1
            for sub_path, module in block.named_modules():
                if not isinstance(module, nn.Linear) or "lora_down" in sub_path or "lora_up" in sub_path:
                    continue
                if sub_path.endswith(".base") or (final and _TEXT_STREAM_OUTPUT.search(sub_path)):
                    continue
                if _in_preset(sub_path, preset):
                    found.append((f"{list_name}.{index}.{sub_path}", module))
    return found


def expected_transformer_count(config: object, family: str, preset: str) -> int | None:
    """Layers a preset wraps, from the transformer's config alone (None for an unknown layout)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    if family in _COUNTS:
        return _COUNTS[family](get, preset)
    layers = get("num_layers")
    if not isinstance(layers, int):
        return None
    ff = preset in ("attention+ff", "all")
    mod = preset == "all"
    if family in ("flux", "chroma"):
        # Chroma's blocks are FLUX's without their modulation layers (its approximator, outside the
        # blocks, computes every block's modulation), so "all" is "attention+ff" there.
        mod = mod and family == "flux"
        single = get("num_single_layers", 0)
        double_each = 8 + (4 if ff else 0) + (2 if mod else 0)
        single_each = 4 + (1 if ff else 0) + (1 if mod else 0)
        return layers * double_each + int(single) * single_each
    if family == "flux2_klein":
        # The modulation is shared by all blocks and lives outside them; the single blocks' two
        # projections are attention (and already carry the MLP).
        return layers * (8 + (4 if ff else 0)) + int(get("num_single_layers", 0)) * 2
    if family == "sd3":
        dual = len(get("dual_attention_layers", ()) or ())
        # The last joint block reads the text but writes none back: no to_add_out, no
        # ff_context, and its context norm is a plain AdaLayerNormContinuous (one linear).
        full = 8 + (4 if ff else 0) + (2 if mod else 0)
        last = 7 + (2 if ff else 0) + (2 if mod else 0)
        return (layers - 1) * full + last + 4 * dual
    return None


def _zimage_count(get, preset: str) -> int | None:
    layers, refiners = get("n_layers"), get("n_refiner_layers")
    if not isinstance(layers, int) or not isinstance(refiners, int):
        return None
    each = 4 + (3 if preset in ("attention+ff", "all") else 0)
    # The context refiner has no modulation (its blocks are built with modulation=False).
    modulated = (layers + refiners) if preset == "all" else 0
    return (layers + 2 * refiners) * each + modulated


def _qwen_image_count(get, preset: str) -> int | None:
    layers = get("num_layers")
    if not isinstance(layers, int):
        return None
    ff = preset in ("attention+ff", "all")
    # The last block's text-stream outputs (to_add_out, and txt_mlp's two) feed nothing: not trained.
    return layers * (8 + (4 if ff else 0) + (2 if preset == "all" else 0)) - (3 if ff else 1)


_COUNTS = {"zimage": _zimage_count, "qwen_image": _qwen_image_count}


# -- FLUX: diffusers paths <-> Black Forest Labs modules ---------------------------------------

# Within a double block: diffusers sub-path -> (BFL sub-module, part, parts).
_FLUX_DOUBLE = {
    "attn.to_q": ("img_attn.qkv", 0, 3), "attn.to_k": ("img_attn.qkv", 1, 3), "attn.to_v": ("img_attn.qkv", 2, 3),
    "attn.add_q_proj": ("txt_attn.qkv", 0, 3), "attn.add_k_proj": ("txt_attn.qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn.qkv", 2, 3),
    "attn.to_out.0": ("img_attn.proj", 0, 1), "attn.to_add_out": ("txt_attn.proj", 0, 1),
    "ff.net.0.proj": ("img_mlp.0", 0, 1), "ff.net.2": ("img_mlp.2", 0, 1),
    "ff_context.net.0.proj": ("txt_mlp.0", 0, 1), "ff_context.net.2": ("txt_mlp.2", 0, 1),
    "norm1.linear": ("img_mod.lin", 0, 1), "norm1_context.linear": ("txt_mod.lin", 0, 1),
}  # fmt: skip
_FLUX_SINGLE = {
    "attn.to_q": ("linear1", 0, 4), "attn.to_k": ("linear1", 1, 4), "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4), "proj_out": ("linear2", 0, 1), "norm.linear": ("modulation.lin", 0, 1),
}  # fmt: skip
# FLUX.2: the same BFL names for the double blocks (its feed-forward layers are linear_in/linear_out), and
# single blocks whose fused projections are already one layer each in diffusers.
_FLUX2_DOUBLE = {**{k: v for k, v in _FLUX_DOUBLE.items() if ".net." not in k and "norm1" not in k},
                 "ff.linear_in": ("img_mlp.0", 0, 1), "ff.linear_out": ("img_mlp.2", 0, 1),
                 "ff_context.linear_in": ("txt_mlp.0", 0, 1), "ff_context.linear_out": ("txt_mlp.2", 0, 1)}
_FLUX2_SINGLE = {"attn.to_qkv_mlp_proj": ("linear1", 0, 1), "attn.to_out": ("linear2", 0, 1)}
_TABLES = {"flux": (_FLUX_DOUBLE, _FLUX_SINGLE), "chroma": (_FLUX_DOUBLE, _FLUX_SINGLE),
           "flux2_klein": (_FLUX2_DOUBLE, _FLUX2_SINGLE)}


def flux_bfl_module(path: str, family: str = "flux") -> tuple[str, int, int]:
    """``transformer_blocks.3.attn.to_k`` -> (``double_blocks.3.img_attn.qkv``, 1, 3): the BFL module, this
    layer's place among the layers fused into it, and how many are fused (FLUX.1, Chroma or FLUX.2)."""
    m = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", path)
    if m:
        double, single = _TABLES[family]
        table = double if m.group(1) == "transformer_blocks" else single
        prefix = "double_blocks" if m.group(1) == "transformer_blocks" else "single_blocks"
        if m.group(3) in table:
            sub, part, parts = table[m.group(3)]
            return f"{prefix}.{m.group(2)}.{sub}", part, parts
    raise ValueError(f"no FLUX (Black Forest Labs) module for transformer layer {path!r}")


def flux_diffusers_parts(bfl_module: str, family: str = "flux") -> list[str]:
    """The diffusers layers fused into a BFL module, in their order inside its weight."""
    m = re.fullmatch(r"(double|single)_blocks\.(\d+)\.(.+)", bfl_module)
    if m:
        double, single = _TABLES[family]
        list_name, table = ("transformer_blocks", double) if m.group(1) == "double" else \
            ("single_transformer_blocks", single)
        parts = sorted(((part, sub) for sub, (bfl, part, _) in table.items() if bfl == m.group(3)))
        if parts:
            return [f"{list_name}.{m.group(2)}.{sub}" for _, sub in parts]
    raise ValueError(f"not a FLUX block module this LoRA layout knows: {bfl_module!r}")


_BFL_COMPOUND = ("double_blocks", "single_blocks", "img_attn", "txt_attn", "img_mlp", "txt_mlp", "img_mod",
                 "txt_mod")


def bfl_from_underscores(name: str) -> str:
    """``double_blocks_0_img_attn_qkv`` -> ``double_blocks.0.img_attn.qkv``."""
    tokens = name.split("_")
    out: list[str] = []
    i = 0
    while i < len(tokens):
        pair = "_".join(tokens[i:i + 2])
        if pair in _BFL_COMPOUND:
            out.append(pair)
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return ".".join(out)


def flux_fused_dims(bfl_module: str, part_out: int) -> list[int]:
    """Output rows of each fused part, from one q/k/v part's width (FLUX's MLP is 4x wider)."""
    if bfl_module.endswith(".linear1"):
        return [part_out, part_out, part_out, 4 * part_out]
    if bfl_module.endswith(".qkv"):
        return [part_out] * 3
    return [part_out]


# Identifiers with "_" inside them in the transformers' diffusers paths, longest first.
_TRANSFORMER_COMPOUND = sorted(
    ["single_transformer_blocks", "transformer_blocks", "to_q", "to_k", "to_v", "to_out", "add_q_proj",
     "add_k_proj", "add_v_proj", "to_add_out", "ff_context", "norm1_context", "proj_mlp", "proj_out",
     "noise_refiner", "context_refiner", "feed_forward", "adaLN_modulation", "img_mlp", "txt_mlp", "img_mod",
     "txt_mod", "to_qkv_mlp_proj", "linear_in", "linear_out"],
    key=lambda s: -s.count("_"),
)


def path_from_internal(name: str) -> str:
    """``lora_unet_transformer_blocks_0_attn_add_q_proj`` -> ``transformer_blocks.0.attn.add_q_proj``."""
    return underscore_to_path(name.removeprefix(INTERNAL_PREFIX), _TRANSFORMER_COMPOUND)
