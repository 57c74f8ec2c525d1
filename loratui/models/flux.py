"""FLUX.1: what it loads, how it conditions, how its transformer is called.

A FLUX.1 pipeline has CLIP-L (its pooled output is the ``vector`` input) and
T5 (its hidden states are the text tokens). The transformer sees the 16
latent channels packed 2x2 into 64-wide tokens, position ids for the text
(zeros) and image tokens (row, column), the timestep as σ in [0, 1] and, on
guidance-distilled models (dev), the guidance value. The objective is flow
matching (``loratui.engine.flow``); the file names are Black Forest Labs'
module paths (``loratui.lora.transformer_names``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from loratui.models.text import TextEmbedding, clip_token_ids, t5_token_ids
from loratui.models.wrapped import unwrap_model

if TYPE_CHECKING:
    from loratui.models.loader import LoadedModel

PIPELINE = "FluxPipeline"
TEXT_SUFFIXES = ("", "_2")  # text_encoder (CLIP-L), text_encoder_2 (T5)
DEV_T5_LENGTH = 512  # FLUX.1-dev; schnell was trained with 256
SCHNELL_T5_LENGTH = 256
LEARNING_RATE = 1e-4  # what sd-scripts and ai-toolkit start Flux LoRAs with


def has_guidance(transformer: Any) -> bool:
    # With several processes the step gets the transformer wrapped in DistributedDataParallel, which has no
    # config: reading the wrapper fed FLUX-dev no guidance and its forward failed on the first step.
    return bool(getattr(unwrap_model(transformer), "config", {}).get("guidance_embeds", False))


def default_t5_length(model: LoadedModel) -> int:
    length = DEV_T5_LENGTH if has_guidance(model.unet) else SCHNELL_T5_LENGTH
    return min(length, int(getattr(model.tokenizers[1], "model_max_length", length) or length))


def encode(model: LoadedModel, captions: list[str], t5_length: int) -> TextEmbedding:
    """T5 hidden states [B, L, D] and CLIP-L's pooled output [B, 768], as FluxPipeline encodes a prompt."""
    clip, t5 = model.text_encoders
    clip_ids = clip_token_ids(model.tokenizers[0], captions).to(_device(clip))
    pooled = clip(clip_ids, output_hidden_states=False).pooler_output
    t5_ids = t5_token_ids(model.tokenizers[1], captions, t5_length).to(_device(t5))
    hidden = t5(t5_ids, output_hidden_states=False)[0]
    return TextEmbedding(hidden, pooled.to(hidden.device))


def _device(module: Any) -> torch.device:
    return next(module.parameters()).device


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C]: each 2x2 patch of latents becomes one token (FluxPipeline's layout)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack` for latents of height x width."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids [H/2 * W/2, 3] of the packed image tokens: (0, row, column)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def predict(transformer: Any, noisy: torch.Tensor, sigmas: torch.Tensor, cond: TextEmbedding,
            *, guidance: float, dtype: torch.dtype) -> torch.Tensor:
    """The transformer's velocity prediction for latents [B, 16, H, W] at σ [B], back in latent layout."""
    b, _, h, w = noisy.shape
    device = noisy.device
    kwargs: dict[str, Any] = {}
    if has_guidance(transformer):
        kwargs["guidance"] = torch.full((b,), float(guidance), device=device, dtype=torch.float32)
    out = transformer(
        hidden_states=pack(noisy).to(dtype),
        timestep=sigmas.to(device=device, dtype=dtype),
        pooled_projections=cond.pooled.to(dtype),
        encoder_hidden_states=cond.hidden.to(dtype),
        txt_ids=torch.zeros(cond.hidden.shape[1], 3, device=device, dtype=dtype),
        img_ids=image_ids(h, w, device, dtype),
        return_dict=False,
        **kwargs,
    )[0]
    return unpack(out, h, w)


TRANSFORMER_CLASS = "FluxTransformer2DModel"


def from_original(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A transformer file in Black Forest Labs' layout as the diffusers model's state dict (widths from config)."""
    from loratui.models.flux_checkpoint import bfl_to_flux

    return bfl_to_flux(state, config)


def check_settings(cfg: Any, model: LoadedModel) -> None:
    """Settings this model cannot honour, refused before training (the engine's flow checks come first)."""
    from loratui.config import ConfigError

    if not has_guidance(model.unet) and cfg.train.guidance_scale != 1.0:
        raise ConfigError(
            f"train.guidance_scale = {cfg.train.guidance_scale:g} is set, but {cfg.model.base} has no guidance "
            "embedding (a FLUX.1-schnell style model, which was never trained with a guidance value); remove "
            "train.guidance_scale or set it to 1.0.")


def check_latent_size(height: int, width: int) -> None:
    if height % 2 or width % 2:
        raise ValueError(f"FLUX packs latents 2x2; a {height}x{width} latent cannot be packed "
                         "(use data.bucket_step and data.resolution in multiples of 16)")
