"""Qwen-Image: what it loads, how it conditions, how its transformer is called.

A Qwen-Image pipeline has one text encoder, Qwen2.5-VL (its language model
only), and a 3D causal VAE whose 16 latent channels are normalised per channel
by the published mean and std (``(z − mean) / std``) instead of one shift and
scale. A caption is put into the pipeline's prompt template (a system turn
asking to describe the image, then the user turn); the encoder's last hidden
states are taken and the template's first 34 tokens (the system turn and the
user marker) dropped, as ``QwenImagePipeline`` does. The transformer takes the
latents packed 2x2 into 64-wide tokens (FLUX's packing), the picture's
(frames, rows, columns) of tokens for its RoPE, the text tokens with their mask,
and the timestep as σ; it predicts the velocity ε − x. Its scheduler shifts σ
with the image's token count (``flux_shift`` reads the same base/max values).
Files are ``transformer.`` PEFT keys, which diffusers and ComfyUI both read.

Qwen-Image has no pooled text vector; the conditioning's ``pooled`` slot
carries the text attention mask [B, L] (1 for a real token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from loratui.models.flux import pack, unpack
from loratui.models.text import TextEmbedding

if TYPE_CHECKING:
    from loratui.models.loader import LoadedModel

PIPELINE = "QwenImagePipeline"
TRANSFORMER = "QwenImageTransformer2DModel"
TEXT_SUFFIXES = ("",)  # text_encoder (Qwen2.5-VL)
TEXT_ENCODER_NAME = "Qwen2.5-VL"
NEGATIVE_PROMPT = True  # QwenImagePipeline's true CFG takes one
EMPTY_NEGATIVE = " "  # guidance needs a negative prompt; Qwen-Image's own examples give " "
GUIDANCE_ARGUMENT = "true_cfg_scale"  # its guidance_scale is for guidance-distilled variants only
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")
TEMPLATE_TOKENS = 34  # QwenImagePipeline.prompt_template_encode_start_idx
MAX_TEXT_LENGTH = 512  # QwenImagePipeline's max_sequence_length
LEARNING_RATE = 1e-4


def default_t5_length(model: LoadedModel) -> int:
    """Caption tokens kept after the template (model.t5_max_length = 0): 512, or what the tokenizer allows."""
    limit = int(getattr(model.tokenizers[0], "model_max_length", MAX_TEXT_LENGTH) or MAX_TEXT_LENGTH)
    return max(1, min(MAX_TEXT_LENGTH, limit - TEMPLATE_TOKENS))


def encode(model: LoadedModel, captions: list[str], length: int) -> TextEmbedding:
    """The language model's last hidden states after the template prefix [B, length, D], and their mask."""
    (encoder,), (tokenizer,) = model.text_encoders, model.tokenizers
    inputs = tokenizer([PROMPT_TEMPLATE.format(c) for c in captions], padding="max_length",
                       max_length=length + TEMPLATE_TOKENS, truncation=True, return_tensors="pt")
    device = next(encoder.parameters()).device
    mask = inputs.attention_mask.to(device)
    hidden = encoder(input_ids=inputs.input_ids.to(device), attention_mask=mask,
                     output_hidden_states=True).hidden_states[-1]
    mask = mask[:, TEMPLATE_TOKENS:].to(hidden.dtype)
    # The pipeline pads with zeros after each caption's last token; so does this.
    return TextEmbedding(hidden[:, TEMPLATE_TOKENS:] * mask[..., None], mask)


def predict(transformer: Any, noisy: torch.Tensor, sigmas: torch.Tensor, cond: TextEmbedding,
            *, guidance: float, dtype: torch.dtype) -> torch.Tensor:
    """The velocity ε − x for latents [B, 16, H, W] at σ [B]; Qwen-Image has no guidance input."""
    b, _, h, w = noisy.shape
    device = noisy.device
    out = transformer(
        hidden_states=pack(noisy).to(dtype),
        timestep=sigmas.to(device=device, dtype=dtype),
        encoder_hidden_states=cond.hidden.to(dtype),
        encoder_hidden_states_mask=cond.pooled.to(device) > 0.5,
        img_shapes=[[(1, h // 2, w // 2)]] * b,
        return_dict=False,
    )[0]
    return unpack(out, h, w)


def encode_latents(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior's (mean, std) [B, 16, h, w] as the transformer takes them. The VAE encodes video, so a
    picture goes in as one frame; its latents are normalised per channel, (z − latents_mean) / latents_std."""
    dist = vae.encode(pixels.unsqueeze(2)).latent_dist
    z_mean, z_std = dist.mean[:, :, 0].float(), dist.std[:, :, 0].float()
    shift = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=z_mean.device).view(-1, 1, 1)
    scale = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32, device=z_mean.device).view(-1, 1, 1)
    # A shifted posterior keeps its spread, so only the mean moves.
    return (z_mean - shift) * scale, z_std * scale


def load_single_file(path: Any, source: str, local: dict[str, Any]) -> Any:
    """A transformer file (diffusers' names, bare or under ComfyUI's ``model.diffusion_model.``) with the
    architecture from ``source``'s transformer config."""
    from diffusers import QwenImageTransformer2DModel
    from safetensors.torch import load_file

    config = QwenImageTransformer2DModel.load_config(source, subfolder="transformer", **local)
    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel.from_config(config)
    state = {k.removeprefix("model.diffusion_model."): v for k, v in load_file(str(path)).items()}
    transformer.load_state_dict(state, strict=True, assign=True)
    return transformer


def check_latent_size(height: int, width: int) -> None:
    if height % 2 or width % 2:
        raise ValueError(f"Qwen-Image packs latents 2x2; a {height}x{width} latent cannot be packed "
                         "(use data.bucket_step and data.resolution in multiples of 16)")
