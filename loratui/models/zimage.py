"""Z-Image: what it loads, how it conditions, how its transformer is called.

A Z-Image pipeline has one text encoder, Qwen3, and the FLUX.1 VAE (16 latent
channels, shift and scale). A caption is wrapped in Qwen's chat template (one
user turn, then the assistant's turn opened, as ``ZImagePipeline`` does), and
the transformer reads the encoder's second-to-last hidden states of the real
tokens only: padding is dropped, so every caption is as long as it is. The
transformer takes a list of latents [C, 1, H, W] and a list of caption
features, patches the latents 2x2 itself, and uses its own timestep
convention: it is given ``(1000 − t) / 1000 = 1 − σ`` (0 is pure noise) and
predicts ``x − ε``, the negative of the velocity the other flow families
predict, so its output is negated here. The objective is otherwise the shared
flow matching (``loratui.engine.flow``); files are ``transformer.`` PEFT keys,
which diffusers and ComfyUI both read (``loratui.lora.transformer_files``).

Z-Image has no pooled text vector; the conditioning's ``pooled`` slot carries
the text attention mask [B, L] (1 for a real token) instead, so captions of
different lengths cache and batch at one padded length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from loratui.models.text import TextEmbedding

if TYPE_CHECKING:
    from loratui.models.loader import LoadedModel

PIPELINE = "ZImagePipeline"
TRANSFORMER = "ZImageTransformer2DModel"
TEXT_SUFFIXES = ("",)  # text_encoder (Qwen3)
TEXT_ENCODER_NAME = "Qwen3"
MAX_TEXT_LENGTH = 512  # ZImagePipeline's max_sequence_length
PATCH = 2
NEGATIVE_PROMPT = True  # ZImagePipeline guides with one when sample.guidance > 0
LEARNING_RATE = 1e-4


def default_t5_length(model: LoadedModel) -> int:
    """The caption length in tokens (model.t5_max_length = 0): the pipeline's 512, or the tokenizer's limit."""
    limit = int(getattr(model.tokenizers[0], "model_max_length", MAX_TEXT_LENGTH) or MAX_TEXT_LENGTH)
    return min(MAX_TEXT_LENGTH, limit)


def chat_prompts(tokenizer: Any, captions: list[str]) -> list[str]:
    """Each caption as one user turn with the assistant's turn opened (thinking on), as ZImagePipeline writes it."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                          add_generation_prompt=True, enable_thinking=True) for c in captions]


def encode(model: LoadedModel, captions: list[str], length: int) -> TextEmbedding:
    """Qwen3's second-to-last hidden states [B, length, D] and the mask of real tokens [B, length]."""
    (encoder,), (tokenizer,) = model.text_encoders, model.tokenizers
    inputs = tokenizer(chat_prompts(tokenizer, captions), padding="max_length", max_length=length, truncation=True,
                       return_tensors="pt")
    device = next(encoder.parameters()).device
    mask = inputs.attention_mask.to(device).bool()
    hidden = encoder(input_ids=inputs.input_ids.to(device), attention_mask=mask,
                     output_hidden_states=True).hidden_states[-2]
    return TextEmbedding(hidden, mask.to(hidden.dtype))


def caption_features(cond: TextEmbedding, dtype: torch.dtype) -> list[torch.Tensor]:
    """The real tokens of each caption, as the transformer takes them (a list, one [L_i, D] per picture)."""
    mask = cond.pooled.to(cond.hidden.device) > 0.5
    return [cond.hidden[i][mask[i]].to(dtype) for i in range(cond.hidden.shape[0])]


def predict(transformer: Any, noisy: torch.Tensor, sigmas: torch.Tensor, cond: TextEmbedding,
            *, guidance: float, dtype: torch.dtype) -> torch.Tensor:
    """The velocity ε − x for latents [B, 16, H, W] at σ [B]; Z-Image has no guidance input."""
    latents = list(noisy.to(dtype).unsqueeze(2).unbind(0))  # [C, F=1, H, W] each
    timestep = (1 - sigmas).to(device=noisy.device, dtype=dtype)
    out = transformer(latents, timestep, caption_features(cond, dtype), return_dict=False)[0]
    return -torch.stack(out).squeeze(2)


def check_latent_size(height: int, width: int) -> None:
    if height % PATCH or width % PATCH:
        raise ValueError(f"Z-Image patches latents 2x2; a {height}x{width} latent cannot be patched "
                         "(use data.bucket_step and data.resolution in multiples of 16)")
