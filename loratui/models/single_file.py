"""Write a diffusers pipeline as one original-layout checkpoint file.

The inverse of diffusers' ``from_single_file``: the UNet goes under
``model.diffusion_model.`` with LDM (SD1/SD2) or SGM (SDXL) block names, the
VAE under ``first_stage_model.`` with the CompVis autoencoder names, and the
text encoders where the original repositories keep them:

==========  ==========================================  =========================================
family      text encoder 1                              text encoder 2
==========  ==========================================  =========================================
sd1         ``cond_stage_model.transformer.`` (HF CLIP)
sd2         ``cond_stage_model.model.`` (OpenCLIP)
sdxl        ``conditioner.embedders.0.transformer.``    ``conditioner.embedders.1.model.`` (OpenCLIP)
==========  ==========================================  =========================================

That is the layout A1111/Forge and ComfyUI load as a checkpoint, and what
kohya sd-scripts writes when it saves a whole model. Every tensor is mapped
by a rule; a key no rule knows is an error, never silently dropped.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from loratui.lora.naming import UNetLayout, unet_ldm_key

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
OPENCLIP_PREFIX = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}

_ARCHITECTURE = {"sd1": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base", "flux": "flux-1-dev",
                 "sd3": "stable-diffusion-v3-medium", "zimage": "z-image-turbo",
                 "qwen_image": "qwen-image", "chroma": "chroma", "flux2_klein": "flux-2-klein"}


class SingleFileError(ValueError):
    """A model that cannot be written in the original layout; the message says why."""


# -- UNet --------------------------------------------------------------------------------------


def unet_to_original(state: Mapping[str, torch.Tensor], layout: UNetLayout) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> ``model.diffusion_model.`` LDM/SGM keys."""
    # unet_ldm_key maps module paths; a parameter name rides along as the last part.
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        _refuse_lora(key)
        try:
            new = unet_ldm_key(key, layout)
        except ValueError as exc:
            raise SingleFileError(
                f"the UNet has a tensor the original layout has no place for: {key!r} ({exc})"
            ) from None
        _put(out, new, tensor, key)
    return out


# -- VAE ---------------------------------------------------------------------------------------

_VAE_TOP = {
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "norm_out",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}


def _vae_key(key: str, num_up_blocks: int) -> str:
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        raise SingleFileError(f"the VAE has a tensor the original layout has no place for: {key!r}")
    module, _, param = rest.rpartition(".")
    if module in _VAE_TOP:
        return f"{side}.{_VAE_TOP[module]}.{param}"
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", module)
    if m:
        level = int(m[2]) if m[1] == "down" else num_up_blocks - 1 - int(m[2])
        return f"{side}.{m[1]}.{level}.block.{m[3]}.{_VAE_RESNET.get(m[4], m[4])}.{param}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", module)
    if m:
        return f"{side}.down.{m[1]}.downsample.conv.{param}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", module)
    if m:
        # CompVis numbers decoder levels from the lowest resolution up; diffusers the other way.
        return f"{side}.up.{num_up_blocks - 1 - int(m[1])}.upsample.conv.{param}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(\w+)", module)
    if m:
        return f"{side}.mid.block_{int(m[1]) + 1}.{_VAE_RESNET.get(m[2], m[2])}.{param}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)", module)
    if m:
        return f"{side}.mid.attn_1.{_VAE_ATTN[m[1]]}.{param}"
    raise SingleFileError(f"the VAE has a tensor the original layout has no place for: {key!r}")


def vae_to_original(state: Mapping[str, torch.Tensor], num_up_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> ``first_stage_model.`` CompVis keys."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = _vae_key(key, num_up_blocks)
        if ".mid.attn_1." in new and new.endswith(".weight") and tensor.dim() == 2:
            # The original attention projections are 1x1 convolutions.
            tensor = tensor[:, :, None, None]
        _put(out, VAE_PREFIX + new, tensor, key)
    return out


# -- text encoders -------------------------------------------------------------------------------


def _text_state(encoder: Any) -> dict[str, torch.Tensor]:
    """The encoder's tensors named as transformers 4 names them (``text_model.…``, ``text_projection.weight``).

    transformers 5 dropped the ``text_model.`` level from CLIPTextModel only;
    the original checkpoints were written from the old layout.
    """
    state = {}
    for key, tensor in encoder.state_dict().items():
        _refuse_lora(key)
        if key.endswith("position_ids"):
            continue  # a constant buffer; diffusers refuses it as an unexpected key
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        state[key] = tensor
    return state


def clip_to_original(encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP-L style encoder, stored as its Hugging Face state dict under ``prefix``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in _text_state(encoder).items():
        if key.startswith("text_projection."):
            raise SingleFileError(
                f"text encoder tensor {key!r}: a projected CLIP encoder belongs in the OpenCLIP slot, not {prefix!r}"
            )
        _put(out, prefix + key, tensor, key)
    return out


_OPENCLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def openclip_to_original(encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """An OpenCLIP-style encoder (SD2's, SDXL's second) in open_clip's own layout under ``prefix``.

    open_clip keeps q, k and v as one ``in_proj`` matrix (q rows first) and
    applies ``x @ text_projection``, the transpose of a Linear weight.
    """
    state = _text_state(encoder)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key in _OPENCLIP_TOP:
            _put(out, prefix + _OPENCLIP_TOP[key], tensor, key)
            continue
        if key == "text_projection.weight":
            _put(out, prefix + "text_projection", tensor.t().contiguous(), key)
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m is None:
            raise SingleFileError(f"the text encoder has a tensor open_clip has no place for: {key!r}")
        layer, module, param = m[1], m[2], m[3]
        block = f"{prefix}transformer.resblocks.{layer}."
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((block, param), {})[module[-6]] = tensor
        elif module in _OPENCLIP_LAYER:
            _put(out, f"{block}{_OPENCLIP_LAYER[module]}.{param}", tensor, key)
        else:
            raise SingleFileError(f"the text encoder has a tensor open_clip has no place for: {key!r}")
    for (block, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise SingleFileError(f"text encoder layer {block!r} lacks one of q/k/v_proj.{param}")
        _put(out, f"{block}attn.in_proj_{param}", torch.cat([parts["q"], parts["k"], parts["v"]], dim=0), block)
    return out


# -- whole model ---------------------------------------------------------------------------------


def original_state_dict(*, unet: Any, vae: Any, text_encoders: Sequence[Any], family: str,
                        prediction_type: str = "epsilon") -> dict[str, torch.Tensor]:  # fmt: skip
    """Every tensor of the model under its original-checkpoint name.

    A v-prediction model also gets the empty ``v_pred`` tensor A1111, Forge
    and ComfyUI read as "this checkpoint predicts v" (for SD2 they would
    assume it; for SDXL it is the only sign).
    """
    if family not in ("sd1", "sd2", "sdxl"):
        raise SingleFileError(f"family {family!r} is not one of sd1, sd2, sdxl")
    expected = 2 if family == "sdxl" else 1
    if len(text_encoders) != expected:
        raise SingleFileError(f"a {family} model has {expected} text encoder(s), got {len(text_encoders)}")
    out = unet_to_original(unet.state_dict(), UNetLayout.from_config(unet.config))
    _merge(out, vae_to_original(vae.state_dict(), len(vae.config.up_block_types)))
    if family == "sd1":
        _merge(out, clip_to_original(text_encoders[0], CLIP_PREFIX["sd1"]))
    elif family == "sd2":
        _merge(out, openclip_to_original(text_encoders[0], OPENCLIP_PREFIX["sd2"]))
    else:
        _merge(out, clip_to_original(text_encoders[0], CLIP_PREFIX["sdxl"]))
        _merge(out, openclip_to_original(text_encoders[1], OPENCLIP_PREFIX["sdxl"]))
    if prediction_type == "v_prediction":
        out["v_pred"] = torch.zeros(0)
    return out


def checkpoint_metadata(family: str, prediction_type: str, *, title: str, resolution: int) -> dict[str, str]:
    """SAI modelspec keys for a whole checkpoint (galleries and A1111's model list read them)."""
    if family == "sd2":
        arch = "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
    else:
        arch = _ARCHITECTURE[family]
    return {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": arch,
        "modelspec.implementation": ("https://github.com/Stability-AI/generative-models" if family == "sdxl"
                                     else "https://github.com/Stability-AI/stablediffusion"),
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": {"v_prediction": "v", "flow": "flow"}.get(prediction_type, "epsilon"),
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def save_single_file(path: str | os.PathLike[str], *, unet: Any, vae: Any, text_encoders: Sequence[Any],
                     family: str, prediction_type: str = "epsilon", dtype: torch.dtype | None = torch.float16,
                     metadata: Mapping[str, str] | None = None) -> Path:  # fmt: skip
    """Write the model as one ``.safetensors`` checkpoint, atomically (temp file, then rename).

    ``dtype`` casts floating-point tensors (None keeps each as it is).
    """
    from safetensors.torch import save_file

    state = original_state_dict(unet=unet, vae=vae, text_encoders=text_encoders, family=family,
                                prediction_type=prediction_type)
    tensors = {k: _cast(v, dtype) for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", **dict(metadata or {})})
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a checkpoint is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_pipeline_single_file(pipe: Any, path: str | os.PathLike[str], *, family: str,
                              prediction_type: str | None = None, **kwargs: Any) -> Path:  # fmt: skip
    """:func:`save_single_file` for a diffusers StableDiffusion(XL)Pipeline."""
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    pred = prediction_type or pipe.scheduler.config.get("prediction_type", "epsilon")
    return save_single_file(path, unet=pipe.unet, vae=pipe.vae, text_encoders=encoders, family=family,
                            prediction_type=pred, **kwargs)


# -- helpers -----------------------------------------------------------------------------------


def _refuse_lora(key: str) -> None:
    if ".lora_down." in key or ".lora_up." in key or key.endswith(".base.weight"):
        raise SingleFileError(
            f"the model still has LoRA layers in it ({key!r}); merge them into the weights first "
            "(loratui.lora.bake_networks) so the checkpoint holds plain weights"
        )


def _put(out: dict[str, torch.Tensor], key: str, tensor: torch.Tensor, source: str) -> None:
    if key in out:
        raise SingleFileError(f"two tensors map to the same checkpoint key {key!r} (the second from {source!r})")
    out[key] = tensor


def _merge(out: dict[str, torch.Tensor], more: Mapping[str, torch.Tensor]) -> None:
    for key, tensor in more.items():
        _put(out, key, tensor, key)


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach().to("cpu")
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.contiguous()
