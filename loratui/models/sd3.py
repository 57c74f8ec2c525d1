"""Stable Diffusion 3.x: what it loads, how it conditions, how its transformer is called.

An SD3 pipeline has CLIP-L, CLIP-G (both with projection) and T5. The text
tokens are the two CLIPs' penultimate hidden states side by side, zero-padded
to T5's width, followed by T5's tokens; the pooled input is both CLIPs'
projected pooled outputs side by side. The transformer takes the 16-channel
latents as they are and the timestep as σ·1000. The objective is flow
matching (``loratui.engine.flow``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from loratui.models.text import TextEmbedding, clip_token_ids, t5_token_ids

if TYPE_CHECKING:
    from loratui.models.loader import LoadedModel

PIPELINE = "StableDiffusion3Pipeline"
TEXT_SUFFIXES = ("", "_2", "_3")  # CLIP-L, CLIP-G, T5
T5_LENGTH = 256  # StableDiffusion3Pipeline's default max_sequence_length
LEARNING_RATE = 1e-4
TRANSFORMER = "SD3Transformer2DModel"
NEGATIVE_PROMPT = True  # classifier-free guidance with a negative prompt


def default_t5_length(model: LoadedModel) -> int:
    return min(T5_LENGTH, int(getattr(model.tokenizers[2], "model_max_length", T5_LENGTH) or T5_LENGTH))


def encode(model: LoadedModel, captions: list[str], t5_length: int) -> TextEmbedding:
    clip_l, clip_g, t5 = model.text_encoders
    hiddens, pooled = [], []
    for encoder, tokenizer in ((clip_l, model.tokenizers[0]), (clip_g, model.tokenizers[1])):
        ids = clip_token_ids(tokenizer, captions).to(_device(encoder))
        out = encoder(ids, output_hidden_states=True)
        hiddens.append(out.hidden_states[-2])  # SD3 reads the penultimate layer, without the final norm
        pooled.append(out[0])
    clip_hidden = torch.cat(hiddens, dim=-1)
    t5_ids = t5_token_ids(model.tokenizers[2], captions, t5_length).to(_device(t5))
    t5_hidden = t5(t5_ids)[0].to(clip_hidden.device)
    clip_hidden = F.pad(clip_hidden, (0, t5_hidden.shape[-1] - clip_hidden.shape[-1]))
    return TextEmbedding(torch.cat([clip_hidden, t5_hidden], dim=-2), torch.cat(pooled, dim=-1))


def _device(module: Any) -> torch.device:
    return next(module.parameters()).device


def predict(transformer: Any, noisy: torch.Tensor, sigmas: torch.Tensor, cond: TextEmbedding,
            *, guidance: float, dtype: torch.dtype) -> torch.Tensor:
    """The transformer's velocity prediction; SD3 has no guidance embedding, so ``guidance`` is unused."""
    return transformer(
        hidden_states=noisy.to(dtype),
        timestep=(sigmas * 1000).to(device=noisy.device, dtype=dtype),
        encoder_hidden_states=cond.hidden.to(dtype),
        pooled_projections=cond.pooled.to(dtype),
        return_dict=False,
    )[0]


def check_latent_size(height: int, width: int) -> None:
    if height % 2 or width % 2:
        raise ValueError(f"SD3 patches latents 2x2; a {height}x{width} latent does not divide "
                         "(use data.bucket_step and data.resolution in multiples of 16)")
