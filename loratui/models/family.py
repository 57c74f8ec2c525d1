"""Which Stable Diffusion family a model is, from its configs or its keys.

Pure functions on already-read configs and key lists, so they are cheap
(nothing here loads weights) and testable with made-up inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux", "zimage", "qwen_image", "chroma", "flux2_klein")
# The flow-matching transformers (SD3.x, FLUX.1, Z-Image, Qwen-Image, Chroma, FLUX.2 klein) are trained on the
# flow ε − x.
FLOW_FAMILIES = ("sd3", "flux", "zimage", "qwen_image", "chroma", "flux2_klein")
PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")

FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "Stable Diffusion XL",
                "sd3": "Stable Diffusion 3.x", "flux": "FLUX.1", "zimage": "Z-Image",
                "qwen_image": "Qwen-Image", "chroma": "Chroma", "flux2_klein": "FLUX.2 klein"}

# Native training resolution of the published models, used when a model's
# own config does not say (single files without a sample_size).
NATIVE_RESOLUTION = {"sd1": 512, "sd2": 512, "sdxl": 1024, "sd3": 1024, "flux": 1024, "zimage": 1024,
                     "qwen_image": 1024, "chroma": 1024, "flux2_klein": 1024}

# The denoiser class of each transformer family in a diffusers folder's transformer/config.json.
TRANSFORMER_CLASSES = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux",
                       "ZImageTransformer2DModel": "zimage", "QwenImageTransformer2DModel": "qwen_image",
                       "ChromaTransformer2DModel": "chroma", "Flux2Transformer2DModel": "flux2_klein"}


def family_from_transformer_config(transformer_config: Mapping[str, Any]) -> str:
    """The family of a diffusers folder from its transformer/config.json."""
    name = str(transformer_config.get("_class_name", ""))
    if name in TRANSFORMER_CLASSES:
        return TRANSFORMER_CLASSES[name]
    raise FamilyError(
        f"its transformer is a {name or 'model of unknown class'}; loratui trains the transformers of "
        "Stable Diffusion 3.x (SD3Transformer2DModel), FLUX.1 (FluxTransformer2DModel), Z-Image "
        "(ZImageTransformer2DModel), Qwen-Image (QwenImageTransformer2DModel), Chroma "
        "(ChromaTransformer2DModel) and FLUX.2 klein (Flux2Transformer2DModel)"
    )


class FamilyError(ValueError):
    """The inputs do not look like any supported Stable Diffusion model."""


def family_from_configs(
    model_index: Mapping[str, Any],
    unet_config: Mapping[str, Any] | None,
    text_encoder_config: Mapping[str, Any] | None = None,
) -> str:
    """Family of a diffusers folder from model_index.json and the UNet config.

    SDXL is recognised by its second text encoder or its size-conditioning
    embedding; SD1 and SD2 by the text width the UNet attends to (768 is
    CLIP-L, 1024 OpenCLIP-H). Models of other widths (fine-tune
    experiments, the built-ins) fall back to what distinguishes SD2's design:
    linear transformer projections and an OpenCLIP-style gelu text encoder.
    """
    class_name = str(model_index.get("_class_name", ""))
    unet = dict(unet_config or {})
    if (
        "XL" in class_name
        or "text_encoder_2" in model_index
        or unet.get("addition_embed_type") == "text_time"
    ):
        return "sdxl"
    if unet and unet.get("in_channels", 4) != 4:
        raise FamilyError(_channels_message(unet.get("in_channels")))
    cross = unet.get("cross_attention_dim")
    if isinstance(cross, (list, tuple)):
        cross = cross[0] if cross else None
    if cross == 768:
        return "sd1"
    if cross == 1024:
        return "sd2"
    if unet.get("use_linear_projection"):
        return "sd2"
    if text_encoder_config and text_encoder_config.get("hidden_act") == "gelu":
        return "sd2"
    if "StableDiffusion" in class_name or unet:
        return "sd1"
    raise FamilyError(f"model_index.json names {class_name or 'no pipeline class'} and has no UNet config")


def prediction_from_scheduler_config(scheduler_config: Mapping[str, Any] | None) -> str:
    """epsilon or v_prediction, as the model's scheduler config declares."""
    value = (scheduler_config or {}).get("prediction_type") or "epsilon"
    if value not in PREDICTION_TYPES:
        raise FamilyError(
            f"scheduler prediction_type {value!r} is not supported; expected one of {', '.join(PREDICTION_TYPES)}"
        )
    return str(value)


# Key fragments of original (LDM/SGM) checkpoints. kohya, A1111 and diffusers'
# from_single_file recognise the families by the same text-encoder prefixes.
_SDXL_KEYS = ("conditioner.embedders.1.",)
_SD2_KEYS = ("cond_stage_model.model.transformer.", "cond_stage_model.model.token_embedding")
_SD1_KEYS = ("cond_stage_model.transformer.",)
_UNET_KEYS = ("model.diffusion_model.",)
# SD3's MMDiT and Black Forest Labs' FLUX layout, bare or under ComfyUI's model.diffusion_model.
_SD3_KEYS = ("joint_blocks.", "model.diffusion_model.joint_blocks.")
_FLUX_KEYS = ("double_blocks.", "single_blocks.", "model.diffusion_model.double_blocks.")
# Z-Image in its original (ComfyUI) layout: fused qkv; its refiners are the sure sign.
_ZIMAGE_KEYS = ("noise_refiner.", "context_refiner.", "model.diffusion_model.noise_refiner.",
                "model.diffusion_model.context_refiner.")
# Qwen-Image's files keep diffusers' names; its image-stream MLP (img_mlp) is its own.
_QWEN_IMAGE_BLOCKS = ("transformer_blocks.", "model.diffusion_model.transformer_blocks.")
# Chroma keeps FLUX's blocks and replaces their modulation with one "approximator" network.
_CHROMA_KEYS = ("distilled_guidance_layer.", "model.diffusion_model.distilled_guidance_layer.")
# FLUX.2 shares one modulation among all blocks of a kind, where FLUX.1 has one per block.
_FLUX2_KEYS = ("single_stream_modulation.", "model.diffusion_model.single_stream_modulation.")


def _channels_message(channels: object) -> str:
    kind = "an inpainting model" if channels == 9 else f"a UNet with {channels} input channels"
    return f"this is {kind}; only Stable Diffusion 1.x, 2.x and XL text-to-image models can be trained"


def family_from_keys(keys: Iterable[str], shapes: Mapping[str, Any] | None = None) -> str:
    """Family of an original-layout single-file checkpoint from its tensor names.

    shapes (name -> shape, as a safetensors header gives them) lets the
    first convolution reject inpainting and other non-4-channel UNets.
    """
    key_list = list(keys)
    first_conv = (shapes or {}).get("model.diffusion_model.input_blocks.0.0.weight")
    if first_conv is not None and len(first_conv) == 4 and first_conv[1] != 4:
        raise FamilyError(_channels_message(first_conv[1]))

    def has(prefixes: tuple[str, ...]) -> bool:
        return any(k.startswith(prefixes) for k in key_list)

    if has(_ZIMAGE_KEYS):
        return "zimage"
    if any(k.startswith(_QWEN_IMAGE_BLOCKS) and ".img_mlp." in k for k in key_list):
        return "qwen_image"
    if has(_CHROMA_KEYS):
        if any("nerf_" in k for k in key_list):
            raise FamilyError("this is Chroma Radiance (it works on pixels, with a NeRF-style decoder, not on VAE "
                              "latents); loratui trains the latent Chroma models such as Chroma1-HD")
        return "chroma"
    if has(_FLUX2_KEYS):
        _refuse_flux2_dev(shapes or {})
        return "flux2_klein"
    if has(_FLUX_KEYS):
        return "flux"
    if has(_SD3_KEYS):
        return "sd3"
    if has(_SDXL_KEYS):
        return "sdxl"
    if has(_SD2_KEYS):
        return "sd2"
    if has(_SD1_KEYS):
        return "sd1"
    if has(_UNET_KEYS):
        # A UNet without its text encoder: SDXL's label embedding (size
        # conditioning) is the one sure sign; otherwise assume SD1.
        if any(k.startswith("model.diffusion_model.label_emb.") for k in key_list):
            return "sdxl"
        return "sd1"
    if any(k.startswith(("lora_unet_", "lora_te", "unet.", "transformer.")) for k in key_list):
        raise FamilyError("this file holds a LoRA or an adapter, not a base model")
    if any(k.startswith(("down_blocks.", "conv_in.")) for k in key_list):
        raise FamilyError(
            "this file holds a single diffusers component, not a whole checkpoint; "
            "point at the diffusers folder that contains model_index.json instead"
        )
    raise FamilyError("no Stable Diffusion UNet or text-encoder tensors were found in it")


# FLUX.2 [dev] conditions on Mistral Small 3 (5120 wide, three layers side by side); klein on Qwen3-4B (7680)
# or Qwen3-8B (12288).
_FLUX2_DEV_TEXT_WIDTH = 15360


def _refuse_flux2_dev(shapes: Mapping[str, Any]) -> None:
    for prefix in ("", "model.diffusion_model."):
        shape = shapes.get(f"{prefix}txt_in.weight")
        if shape is not None and len(shape) == 2 and shape[1] == _FLUX2_DEV_TEXT_WIDTH:
            raise FamilyError(FLUX2_DEV_MESSAGE)


FLUX2_DEV_MESSAGE = ("this is FLUX.2 [dev] (32 B parameters, Mistral text encoder), which loratui does not "
                     "train; it trains FLUX.2 klein (black-forest-labs/FLUX.2-klein-base-4B or -9B)")


def prediction_from_keys(keys: Iterable[str], family: str) -> str:
    """Prediction type of a single-file checkpoint.

    Checkpoints trained for v-prediction usually carry an empty ``v_pred``
    tensor as a marker (the convention of the SDXL v-pred fine-tunes and
    A1111/Forge). Without it SD2 is taken as v-prediction, as diffusers does,
    because the 768 px 2.0/2.1 models most SD2 files derive from are; SD1
    and SDXL as epsilon. The user can override either in the config.
    """
    if family in FLOW_FAMILIES:
        return "flow"
    if has_v_pred_marker(keys):
        return "v_prediction"
    return "v_prediction" if family == "sd2" else "epsilon"


def has_v_pred_marker(keys: Iterable[str]) -> bool:
    """Whether a checkpoint carries the empty ``v_pred`` tensor that marks v-prediction."""
    return any(k == "v_pred" or k.endswith(".v_pred") for k in keys)


def native_resolution(family: str, prediction_type: str, unet_config: Mapping[str, Any] | None = None) -> int:
    """Pixel size the model was trained at.

    A UNet config's sample_size (in latents) times the VAE's 8x is the
    model's own statement; the family default covers configs without one.
    """
    sample = (unet_config or {}).get("sample_size")
    if isinstance(sample, (list, tuple)):
        sample = sample[0] if sample else None
    if isinstance(sample, int) and sample > 0:
        return sample * 8
    if family == "sd2" and prediction_type == "v_prediction":
        return 768
    return NATIVE_RESOLUTION[family]


def check_family(value: str) -> str:
    if value not in FAMILIES:
        raise FamilyError(f"family {value!r} is not known; use one of {', '.join(FAMILIES)}")
    return value


def check_prediction_type(value: str) -> str:
    if value not in PREDICTION_TYPES:
        raise FamilyError(f"prediction_type {value!r} is not known; use one of {', '.join(PREDICTION_TYPES)}")
    return value


_PUBLISHED = {
    "flux": "black-forest-labs/FLUX.1-dev (or FLUX.1-schnell)",
    "sd3": "stabilityai/stable-diffusion-3.5-medium (24 joint blocks) or -3.5-large (38)",
    "zimage": "Tongyi-MAI/Z-Image-Turbo",
    "qwen_image": "Qwen/Qwen-Image",
    "chroma": "lodestones/Chroma1-HD",
    "flux2_klein": "black-forest-labs/FLUX.2-klein-base-4B (or -base-9B)",
}
# The parts a transformer-only file of each family needs from elsewhere.
_COMPANIONS = {"zimage": "text encoder (Qwen3), VAE", "qwen_image": "text encoder (Qwen2.5-VL), VAE",
               "chroma": "text encoder (T5), VAE", "flux2_klein": "text encoder (Qwen3), VAE"}


def single_file_advice(path: object, family: str, joint_blocks: int | None = None) -> str:
    """What to set when a FLUX/SD3 single file comes without the parts loratui needs besides it."""
    size = ""
    if family == "sd3" and joint_blocks is not None:
        known = {24: "SD3 Medium / SD3.5 Medium", 38: "SD3.5 Large"}
        size = (f" Its {joint_blocks} joint blocks are {known[joint_blocks]}'s." if joint_blocks in known
                else f" Its size ({joint_blocks} joint blocks) is not one of the published SD3 models, so the "
                     "architecture must come from a folder made for it.")
    parts = _COMPANIONS.get(family, "text encoders (CLIP, T5), VAE")
    return (f"{path} holds a {FAMILY_NAMES[family]} transformer; its {parts} and "
            "configs come from elsewhere. Set model.config_source to a diffusers folder or hub id of the same "
            f"model, e.g. {_PUBLISHED[family]}.{size}")
