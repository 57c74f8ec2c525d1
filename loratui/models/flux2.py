"""FLUX.2 klein: what it loads, how it conditions, how its transformer is called.

FLUX.2 klein (black-forest-labs/FLUX.2-klein-base-4B and -9B, and the
step-distilled FLUX.2-klein-4B/-9B) as diffusers' ``Flux2KleinPipeline``
defines it, which the peers (diffusers' ``train_dreambooth_lora_flux2_klein.py``,
musubi-tuner) follow:

- Text: Qwen3 (a causal LM) reads the caption wrapped in its chat template
  (a user turn, the generation prompt, thinking switched off), padded to 512
  tokens; the hidden states after layers 9, 18 and 27 are laid side by side,
  so a token is 3x the encoder's width. No pooled vector, no text mask in the
  transformer. Text position ids are (0, 0, 0, token index).
- Latents: the VAE (``AutoencoderKLFlux2``) gives 32 channels at 1/8 size;
  FLUX.2 patchifies them 2x2 into 128 channels and normalises each of those
  with the VAE's batch-norm running mean and variance. loratui keeps the
  normalised latents back in the VAE's 32-channel layout (same numbers, placed
  2x2 again), so buckets, masks and the token count mean what they mean for
  FLUX.1; the transformer call patchifies them and flattens the 128-channel
  grid into tokens with ids (0, row, column, 0).
- Timestep: σ in [0, 1] (the transformer multiplies by 1000); the base models
  have no guidance embedding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from loratui.models.text import TextEmbedding
from loratui.models.wrapped import unwrap_model

if TYPE_CHECKING:
    from loratui.models.loader import LoadedModel

PIPELINE = "Flux2KleinPipeline"
TEXT_SUFFIXES = ("",)  # text_encoder (Qwen3) only
TEXT_ENCODER_NAME = "Qwen3"
TEXT_LENGTH = 512  # Flux2KleinPipeline's max_sequence_length
HIDDEN_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's text_encoder_out_layers
LEARNING_RATE = 1e-4


def default_t5_length(model: LoadedModel) -> int:
    """The caption length in Qwen3 tokens (``model.t5_max_length`` sets it for this family too)."""
    return min(TEXT_LENGTH, int(getattr(model.tokenizers[0], "model_max_length", TEXT_LENGTH) or TEXT_LENGTH))


def token_ids(tokenizer: Any, captions: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [B, length] of each caption in Qwen3's chat template, as the pipeline makes them."""
    ids, masks = [], []
    for caption in captions:
        text = tokenizer.apply_chat_template([{"role": "user", "content": caption}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
        out = tokenizer(text, return_tensors="pt", padding="max_length", truncation=True, max_length=length)
        ids.append(out["input_ids"])
        masks.append(out["attention_mask"])
    return torch.cat(ids), torch.cat(masks)


def encode(model: LoadedModel, captions: list[str], length: int) -> TextEmbedding:
    """Qwen3's hidden states after layers 9, 18 and 27, side by side: [B, L, 3·D]; no pooled vector."""
    (encoder,) = model.text_encoders
    ids, mask = token_ids(model.tokenizers[0], captions, length)
    device = next(encoder.parameters()).device
    out = encoder(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                  use_cache=False)
    layers = torch.stack([out.hidden_states[k] for k in HIDDEN_LAYERS], dim=1)  # [B, 3, L, D]
    b, n, seq, width = layers.shape
    return TextEmbedding(layers.permute(0, 2, 1, 3).reshape(b, seq, n * width))


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2], FLUX.2's channel order (each channel's 2x2 patch together)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b, c4, h, w = latents.shape
    x = latents.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c4 // 4, h * 2, w * 2)


def _batch_norm_stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, like.dtype)
    return mean, std


def encode_latents(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior's (mean, std) normalised as FLUX.2 normalises latents, in the VAE's 32-channel layout."""
    dist = vae.encode(pixels).latent_dist
    mean, std = dist.mean.float(), dist.std.float()
    bn_mean, bn_std = _batch_norm_stats(vae, mean)
    return unpatchify((patchify(mean) - bn_mean) / bn_std), unpatchify(patchify(std) / bn_std)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents [B, 32, H, W] -> tokens [B, H/2 · W/2, 128] (Flux2KleinPipeline._pack_latents after
    patchifying)."""
    x = patchify(latents)
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).permute(0, 2, 1)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack` for latents of height x width (in the 32-channel layout)."""
    b, _, c = tokens.shape
    return unpatchify(tokens.permute(0, 2, 1).reshape(b, c, height // 2, width // 2))


def image_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Position ids [H/2 · W/2, 4] of the image tokens: (0, row, column, 0)."""
    zero = torch.arange(1)
    return torch.cartesian_prod(zero, torch.arange(height // 2), torch.arange(width // 2), zero).to(device)


def text_ids(length: int, device: torch.device) -> torch.Tensor:
    """Position ids [L, 4] of the text tokens: (0, 0, 0, index)."""
    zero = torch.arange(1)
    return torch.cartesian_prod(zero, zero, zero, torch.arange(length)).to(device)


def predict(transformer: Any, noisy: torch.Tensor, sigmas: torch.Tensor, cond: TextEmbedding,
            *, guidance: float, dtype: torch.dtype) -> torch.Tensor:
    """The transformer's velocity prediction for normalised latents [B, 32, H, W] at σ [B]."""
    b, _, h, w = noisy.shape
    device = noisy.device
    config = getattr(unwrap_model(transformer), "config", {})
    guidance_value = None
    if config.get("guidance_embeds", False):
        guidance_value = torch.full((b,), float(guidance), device=device, dtype=torch.float32)
    out = transformer(
        hidden_states=pack(noisy).to(dtype),
        timestep=sigmas.to(device=device, dtype=dtype),
        guidance=guidance_value,
        encoder_hidden_states=cond.hidden.to(dtype),
        txt_ids=text_ids(cond.hidden.shape[1], device),
        img_ids=image_ids(h, w, device),
        return_dict=False,
    )[0]
    return unpack(out, h, w)


TRANSFORMER_CLASS = "Flux2Transformer2DModel"


def from_original(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A FLUX.2 file in Black Forest Labs' layout (bare or under ComfyUI's ``model.diffusion_model.``) as the
    diffusers model's state dict; diffusers' converter takes every width from the file, but not the prefix."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    return convert_flux2_transformer_checkpoint_to_diffusers(
        {k.removeprefix("model.diffusion_model."): v for k, v in state.items()})


def check_settings(cfg: Any, model: LoadedModel) -> None:
    """Settings this model cannot honour, refused before training (the engine's flow checks come first)."""
    from loratui.config import ConfigError

    if not model.unet.config.get("guidance_embeds") and cfg.train.guidance_scale != 1.0:
        raise ConfigError(
            f"train.guidance_scale = {cfg.train.guidance_scale:g} is set, but {cfg.model.base} has no guidance "
            "embedding (a FLUX.2 klein base model, which was never trained with a guidance value); remove "
            "train.guidance_scale or set it to 1.0.")


def check_latent_size(height: int, width: int) -> None:
    if height % 2 or width % 2:
        raise ValueError(f"FLUX.2 patchifies latents 2x2; a {height}x{width} latent cannot be patchified "
                         "(use data.bucket_step and data.resolution in multiples of 16)")
