"""kohya LoRA module names, built from a fixed rule.

Names never come straight from ``named_modules()``: library versions rename
module paths (transformers 5 dropped ``text_model.`` from CLIPTextModel) while
every loader keeps expecting the same kohya names. SD1/SD2 UNet names use the
diffusers block layout; SDXL UNet names use the SGM layout (``input_blocks``,
``middle_block``, ``output_blocks``), as kohya sd-scripts writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux", "zimage", "qwen_image", "chroma", "flux2_klein")
# Flow-matching transformers: their denoiser is named by loratui.lora.transformer_names.
TRANSFORMER_FAMILIES = ("sd3", "flux", "zimage", "qwen_image", "chroma", "flux2_klein")
COMPONENTS = ("unet", "te", "te1", "te2")

KOHYA_PREFIX = {"unet": "lora_unet", "te": "lora_te", "te1": "lora_te1", "te2": "lora_te2"}
# Where each component lives in a diffusers pipeline / PEFT file.
DIFFUSERS_PREFIX = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}

# The text-encoder sub-modules every loader knows (ComfyUI's LORA_CLIP_MAP).
TE_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")

_FAMILY_ALIASES = {
    "sd1": "sd1", "sd15": "sd1", "sd1.5": "sd1", "sd_v1": "sd1", "sd_v1_v": "sd1", "v1": "sd1", "sd": "sd1",
    "sd2": "sd2", "sd21": "sd2", "sd2.1": "sd2", "sd_v2": "sd2", "sd_v2_v": "sd2", "v2": "sd2",
    "sdxl": "sdxl", "sdxl_base_v1-0": "sdxl", "xl": "sdxl",
    "sd3": "sd3", "sd3.5": "sd3", "sd35": "sd3", "sd3_medium": "sd3", "sd3_large": "sd3", "sd3.5_medium": "sd3",
    "sd3.5_large": "sd3",
    "flux": "flux", "flux1": "flux", "flux.1": "flux", "flux1_dev": "flux", "flux1_schnell": "flux",
    "zimage": "zimage", "z_image": "zimage", "z-image": "zimage", "z_image_turbo": "zimage",
    "qwen_image": "qwen_image", "qwen-image": "qwen_image", "qwenimage": "qwen_image",
    "chroma": "chroma", "chroma1": "chroma", "chroma1_hd": "chroma",
    "flux2_klein": "flux2_klein", "flux2": "flux2_klein", "flux.2": "flux2_klein", "flux2_klein_4b": "flux2_klein",
    "flux2_klein_9b": "flux2_klein",
}  # fmt: skip


# Families whose text encoders are LLMs that never get a LoRA: their files hold the transformer alone.
_TRANSFORMER_ONLY = ("zimage", "qwen_image", "chroma", "flux2_klein")
_VERSIONS = {"flux": "flux1", "sd3": "sd3"}
_ARCHITECTURE_PREFIX = {"zimage": ("z-image",), "qwen_image": ("qwen-image",), "chroma": ("chroma",),
                        "flux2_klein": ("flux.2", "flux-2", "flux2")}


def normalize_family(family: str) -> str:
    """Map the usual spellings (``SD1.5``, ``sd_v1``, ``sdxl_base_v1-0``) to sd1/sd2/sdxl."""
    text = str(family).strip().lower()
    key = _FAMILY_ALIASES.get(text) or _FAMILY_ALIASES.get(text.replace("-", "_").replace(" ", ""))
    if key is None and text.startswith("sdxl"):
        key = "sdxl"
    if key is None:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return key


def components_for(family: str) -> tuple[str, ...]:
    """The component names a family's pipeline has (``te`` for SD1/SD2, ``te1``/``te2`` for SDXL).

    FLUX's CLIP-L is ``te1`` (sd-scripts' ``lora_te1_``), SD3's CLIP-L and CLIP-G ``te1``/``te2``; T5 gets no LoRA,
    so Chroma (T5 alone) has the transformer only; so has FLUX.2 klein (Qwen3 alone, which gets none either).
    """
    family = normalize_family(family)
    if family in _TRANSFORMER_ONLY:
        return ("unet",)
    if family in ("sdxl", "sd3"):
        return ("unet", "te1", "te2")
    return ("unet", "te1") if family == "flux" else ("unet", "te")


@dataclass(frozen=True)
class UNetLayout:
    """What SGM block numbering depends on: resnets per down block and which up blocks have attention."""

    layers_per_block: int = 2
    up_block_has_attention: tuple[bool, ...] = (True, True, False)

    @classmethod
    def from_config(cls, config: Any) -> UNetLayout:
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        lpb = get("layers_per_block", 2)
        if isinstance(lpb, (list, tuple)):
            if len(set(lpb)) != 1:
                raise ValueError(f"UNet layers_per_block={list(lpb)} varies per block; SGM names need one value")
            lpb = lpb[0]
        up_types = get("up_block_types", None) or ()
        return cls(int(lpb), tuple("CrossAttn" in str(t) for t in up_types) or cls.up_block_has_attention)

    @classmethod
    def for_family(cls, family: str, layers_per_block: int | None = None) -> UNetLayout:
        attn = (True, True, False) if normalize_family(family) == "sdxl" else (False, True, True, True)
        return cls(layers_per_block or 2, attn)


# -- diffusers <-> SGM/LDM UNet paths ------------------------------------------------

_RESNET_TO_SGM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_RESNET_FROM_SGM = {v: k for k, v in _RESNET_TO_SGM.items()}
_TOP_TO_SGM = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "conv_norm_out": "out.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_TOP_FROM_SGM = {v: k for k, v in _TOP_TO_SGM.items()}


def _split_leaf(rest: str) -> tuple[str, str]:
    head, _, tail = rest.partition(".")
    return head, tail


def _resnet_leaf_to_sgm(path: str, leaf: str) -> str:
    if leaf not in _RESNET_TO_SGM:
        raise ValueError(f"no SGM name for resnet layer {leaf!r} in {path!r}")
    return _RESNET_TO_SGM[leaf]


def diffusers_to_sgm(path: str, layout: UNetLayout) -> str:
    """``down_blocks.1.attentions.0.proj_in`` -> ``input_blocks.4.1.proj_in`` (dotted paths)."""
    for top, sgm in _TOP_TO_SGM.items():
        if path == top or path.startswith(top + "."):
            return sgm + path[len(top) :]
    n = layout.layers_per_block
    m = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", path)
    if m:
        kind, i, inner, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down_blocks":
            if inner == "downsamplers":
                return f"input_blocks.{(i + 1) * (n + 1)}.0.op" + rest[len("conv") :]
            block = f"input_blocks.{i * (n + 1) + j + 1}"
        else:
            if inner == "upsamplers":
                has_attn = i < len(layout.up_block_has_attention) and layout.up_block_has_attention[i]
                return f"output_blocks.{i * (n + 1) + n}.{2 if has_attn else 1}.{rest}"
            block = f"output_blocks.{i * (n + 1) + j}"
        if inner == "resnets":
            leaf, tail = _split_leaf(rest)
            return f"{block}.0.{_resnet_leaf_to_sgm(path, leaf)}" + (f".{tail}" if tail else "")
        return f"{block}.1.{rest}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", path)
    if m:
        inner, j, rest = m.group(1), int(m.group(2)), m.group(3)
        if inner == "attentions":
            return f"middle_block.1.{rest}"
        leaf, tail = _split_leaf(rest)
        return f"middle_block.{2 * j}.{_resnet_leaf_to_sgm(path, leaf)}" + (f".{tail}" if tail else "")
    raise ValueError(f"no SGM name for UNet module {path!r}")


def sgm_to_diffusers(path: str, layout: UNetLayout) -> str:
    """Inverse of :func:`diffusers_to_sgm`."""
    for sgm, top in _TOP_FROM_SGM.items():
        if path == sgm or path.startswith(sgm + "."):
            return top + path[len(sgm) :]
    n = layout.layers_per_block

    def resnet_leaf(rest: str) -> str:
        for sgm_leaf, leaf in _RESNET_FROM_SGM.items():
            if rest == sgm_leaf or rest.startswith(sgm_leaf + "."):
                return leaf + rest[len(sgm_leaf) :]
        raise ValueError(f"unknown SGM resnet layer in {path!r}")

    m = re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", path)
    if m:
        k, inner, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        i, j = (k - 1) // (n + 1), (k - 1) % (n + 1)
        if rest == "op" or rest.startswith("op."):
            return f"down_blocks.{i}.downsamplers.0.conv" + rest[2:]
        if inner == 0:
            return f"down_blocks.{i}.resnets.{j}.{resnet_leaf(rest)}"
        return f"down_blocks.{i}.attentions.{j}.{rest}"
    m = re.fullmatch(r"middle_block\.(\d+)\.(.+)", path)
    if m:
        k, rest = int(m.group(1)), m.group(2)
        if k == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{k // 2}.{resnet_leaf(rest)}"
    m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", path)
    if m:
        k, inner, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        i, j = k // (n + 1), k % (n + 1)
        if inner == 0:
            return f"up_blocks.{i}.resnets.{j}.{resnet_leaf(rest)}"
        if rest == "conv" or rest.startswith("conv."):
            return f"up_blocks.{i}.upsamplers.0.{rest}"
        return f"up_blocks.{i}.attentions.{j}.{rest}"
    raise ValueError(f"not an SGM UNet module path: {path!r}")


def unet_ldm_key(path: str, layout: UNetLayout) -> str:
    """The original-checkpoint (LDM/SGM) prefix of a diffusers UNet module."""
    return "model.diffusion_model." + diffusers_to_sgm(path, layout)


# -- kohya names ---------------------------------------------------------------------


def unet_kohya_name(path: str, family: str, layout: UNetLayout | None = None) -> str:
    """kohya name of a diffusers UNet module path (``down_blocks.0.attentions.0.proj_in``)."""
    family = normalize_family(family)
    if family == "sdxl":
        path = diffusers_to_sgm(path, layout or UNetLayout.for_family(family))
    return "lora_unet_" + path.replace(".", "_")


def te_module_path(layer_index: int, sub: str) -> str:
    """Canonical (transformers 4 style) path of a CLIP encoder sub-module."""
    return f"text_model.encoder.layers.{layer_index}.{sub}"


def te_kohya_name(component: str, layer_index: int, sub: str) -> str:
    """``lora_te1_text_model_encoder_layers_0_self_attn_q_proj`` from the layer index and sub-name."""
    if component not in ("te", "te1", "te2"):
        raise ValueError(f"not a text-encoder component: {component!r}")
    return f"{KOHYA_PREFIX[component]}_" + te_module_path(layer_index, sub).replace(".", "_")


# Identifiers that themselves contain "_": reading an underscore name back into
# a dotted path needs to know them (longest match first).
_COMPOUND = sorted(
    [
        "down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block",
        "transformer_blocks", "to_q", "to_k", "to_v", "to_out", "proj_in", "proj_out",
        "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "conv_norm_out", "in_layers",
        "out_layers", "emb_layers", "skip_connection", "time_embedding", "add_embedding",
        "linear_1", "linear_2", "time_embed", "label_emb", "text_model", "self_attn", "q_proj",
        "k_proj", "v_proj", "out_proj", "text_projection", "final_layer_norm",
    ],
    key=lambda s: -s.count("_"),
)  # fmt: skip


def underscore_to_path(name: str, compounds: list[str] | None = None) -> str:
    """``down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0`` -> dotted path.

    ``compounds`` are the identifiers that keep their own underscores, longest first (the UNets'
    and text encoders' by default)."""
    tokens = name.split("_")
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for word in _COMPOUND if compounds is None else compounds:
            parts = word.split("_")
            if tokens[i : i + len(parts)] == parts:
                out.append(word)
                i += len(parts)
                break
        else:
            out.append(tokens[i])
            i += 1
    return ".".join(out)


def split_kohya_name(name: str) -> tuple[str, str]:
    """``lora_te2_text_model_...`` -> (``te2``, ``text_model_...``)."""
    for component in ("te1", "te2", "te", "unet"):
        prefix = KOHYA_PREFIX[component] + "_"
        if name.startswith(prefix):
            return component, name[len(prefix) :]
    raise ValueError(f"{name!r} is not a kohya LoRA name (expected lora_unet_/lora_te_/lora_te1_/lora_te2_)")


def kohya_to_module_path(name: str, family: str, layout: UNetLayout | None = None) -> tuple[str, str]:
    """kohya name -> (component, diffusers/PEFT module path); SGM names are mapped back for SDXL."""
    component, rest = split_kohya_name(name)
    if component == "unet" and normalize_family(family) in TRANSFORMER_FAMILIES:
        from loratui.lora.transformer_names import path_from_internal

        return component, path_from_internal(name)
    path = underscore_to_path(rest)
    if component == "unet" and path.split(".", 1)[0] in ("input_blocks", "middle_block", "output_blocks", "out",
                                                          "time_embed", "label_emb"):  # fmt: skip
        path = sgm_to_diffusers(path, layout or UNetLayout.for_family(family))
    return component, path


def module_path_to_kohya(component: str, path: str, family: str, layout: UNetLayout | None = None) -> str:
    """Inverse of :func:`kohya_to_module_path` for canonical paths."""
    if component == "unet" and normalize_family(family) in TRANSFORMER_FAMILIES:
        from loratui.lora.transformer_names import internal_name

        return internal_name(path)
    if component == "unet":
        return unet_kohya_name(path, family, layout)
    m = re.fullmatch(r"(?:text_model\.)?encoder\.layers\.(\d+)\.(.+)", path)
    if not m:
        raise ValueError(f"not a CLIP encoder module path: {path!r}")
    return te_kohya_name(component, int(m.group(1)), m.group(2))


# -- family ------------------------------------------------------------------------------


def base_model_version(family: str, v_prediction: bool = False) -> str:
    """``ss_base_model_version`` as kohya writes it (A1111 hides LoRAs whose version mismatches)."""
    family = normalize_family(family)
    if family == "sdxl":
        return "sdxl_base_v1-0"
    if family == "chroma":
        return "chroma"
    if family == "flux2_klein":
        return "flux2"
    if family in TRANSFORMER_FAMILIES:
        return _VERSIONS.get(family, family)  # sd-scripts' spellings for FLUX and SD3
    return ("sd_v2" if family == "sd2" else "sd_v1") + ("_v" if v_prediction else "")


def family_from_metadata(metadata: dict[str, str]) -> str | None:
    version = metadata.get("ss_base_model_version", "")
    if version in _TRANSFORMER_ONLY:
        return version
    if version.startswith("chroma"):
        return "chroma"
    if version.startswith("flux2") or version.startswith("flux.2"):
        return "flux2_klein"
    if version.startswith("flux"):
        return "flux"
    if version.startswith("sd3"):
        return "sd3"
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2") or metadata.get("ss_v2") == "True":
        return "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    # ModelSpec names are matched without case: musubi-tuner writes "Z-Image", "Qwen-Image", "Flux.2-klein-4b".
    arch = metadata.get("modelspec.architecture", "").lower()
    for family, prefixes in _ARCHITECTURE_PREFIX.items():
        if arch.startswith(prefixes):
            return family
    if arch.startswith("flux"):
        return "flux"
    if arch.startswith("stable-diffusion-v3"):
        return "sd3"
    if "stable-diffusion-xl" in arch:
        return "sdxl"
    if "stable-diffusion-v2" in arch:
        return "sd2"
    if "stable-diffusion-v1" in arch:
        return "sd1"
    return None


def guess_family(names_to_down_shapes: dict[str, tuple[int, ...]], metadata: dict[str, str]) -> str | None:
    """Tell SD1/SD2/SDXL from kohya names, tensor shapes and metadata; None when nothing decides."""
    if family := family_from_metadata(metadata):
        return family
    names = list(names_to_down_shapes)
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names):
        return "sdxl"
    if any(re.search(r"transformer_blocks_[1-9]", n) for n in names):
        return "sdxl"  # SD1/SD2 have one transformer block per attention
    # SDXL's first down block has no attention; SD1/SD2's has.
    if any(n.startswith(("lora_unet_down_blocks_0_attentions", "lora_unet_input_blocks_1_1_")) for n in names):
        return _sd1_or_sd2(names_to_down_shapes) or "sd1"
    if any(n.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
           for n in names):  # fmt: skip
        return "sdxl"  # kohya writes SGM names only for SDXL
    context = [s[1] for n, s in names_to_down_shapes.items() if n.endswith("attn2_to_k") and len(s) > 1]
    return {2048: "sdxl", 1024: "sd2", 768: "sd1"}.get(context[0]) if context else _sd1_or_sd2(names_to_down_shapes)


def _sd1_or_sd2(shapes: dict[str, tuple[int, ...]]) -> str | None:
    context = [s[1] for n, s in shapes.items() if n.endswith("attn2_to_k") and len(s) > 1]
    te = [s[1] for n, s in shapes.items() if n.startswith("lora_te_") and n.endswith("q_proj") and len(s) > 1]
    width = context[0] if context else te[0] if te else None
    return "sd2" if width == 1024 else "sd1" if width is not None else None
