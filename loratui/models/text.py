"""Turn captions into what the UNet attends to, as the diffusers pipelines do.

SD1/SD2 feed the UNet the text encoder's last hidden state after its final
layer norm; ``clip_skip=2`` takes the layer before the last and passes it
through that same norm (A1111's convention). SDXL concatenates both encoders'
penultimate hidden states (no final norm) and adds the second encoder's
projected pooled output. Nothing here turns gradients off, so the same calls
serve text-encoder LoRA training and, under ``torch.no_grad``, caching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from loratui.models.wrapped import unwrap_model

if TYPE_CHECKING:
    from loratui.models.loader import LoadedModel

MAX_TOKENS = 77


@dataclass
class TextEmbedding:
    """Per-caption conditioning: hidden [B, 77, D]; pooled [B, P] for SDXL, else None.

    The flow families always fill ``pooled``: SD3's and FLUX's pooled CLIP vectors; for Z-Image and
    Qwen-Image, which have none, the mask of real text tokens [B, L] (1 = a token), so captions of
    different lengths cache and batch at one padded length."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEmbedding:
        pooled = self.pooled.to(device=device, dtype=dtype) if self.pooled is not None else None
        return TextEmbedding(self.hidden.to(device=device, dtype=dtype), pooled)


def tokenize(model: LoadedModel, captions: list[str]) -> list[torch.Tensor]:
    """Token ids [B, 77] for each of the model's tokenizers, padded and truncated."""
    out = []
    for tok in model.tokenizers:
        ids = tok(
            list(captions),
            padding="max_length",
            max_length=MAX_TOKENS,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out.append(ids)
    return out


def _final_layer_norm(encoder: Any) -> torch.nn.Module:
    # transformers 5 moved CLIPTextModel's layers up a level (no text_model)
    # while CLIPTextModelWithProjection keeps it; look in both places.
    model = unwrap_model(encoder)
    return getattr(model, "text_model", model).final_layer_norm


def _device(encoder: Any) -> torch.device:
    return next(unwrap_model(encoder).parameters()).device


def _check_clip_skip(clip_skip: int, encoder: Any, *, already_skipped: int = 0) -> None:
    # hidden_states holds the embeddings plus one entry per layer; skipping
    # down to the embeddings themselves would leave no layer at all.
    most = int(unwrap_model(encoder).config.num_hidden_layers) - already_skipped
    if not 1 <= clip_skip <= most:
        raise ValueError(f"clip_skip must be between 1 and {most} for this model's text encoder, got {clip_skip}")


def encode_tokens(model: LoadedModel, token_ids: list[torch.Tensor], *, clip_skip: int = 1) -> TextEmbedding:
    """Encode ids from ``tokenize``; clip_skip=1 is the usual last layer."""
    if len(token_ids) != len(model.text_encoders):
        raise ValueError(f"expected ids for {len(model.text_encoders)} tokenizers, got {len(token_ids)}")
    if model.family == "sdxl":
        return _encode_sdxl(model, token_ids, clip_skip)
    encoder = model.text_encoders[0]
    _check_clip_skip(clip_skip, encoder)
    ids = token_ids[0].to(_device(encoder))
    if clip_skip == 1:
        hidden = encoder(ids)[0]
    else:
        states = encoder(ids, output_hidden_states=True).hidden_states
        hidden = _final_layer_norm(encoder)(states[-clip_skip])
    return TextEmbedding(hidden)


def _encode_sdxl(model: LoadedModel, token_ids: list[torch.Tensor], clip_skip: int) -> TextEmbedding:
    hiddens = []
    pooled = None
    for encoder, ids in zip(model.text_encoders, token_ids):
        _check_clip_skip(clip_skip, encoder, already_skipped=1)
        out = encoder(ids.to(_device(encoder)), output_hidden_states=True)
        # SDXL was trained on the penultimate layer; clip_skip counts on from there.
        hiddens.append(out.hidden_states[-(clip_skip + 1)])
        pooled = out[0]  # the last encoder's projected pooled output (text_embeds)
    # Both encoders normally share a device; if not, gather on the first's.
    target = hiddens[0].device
    hidden = torch.cat([h.to(target) for h in hiddens], dim=-1)
    return TextEmbedding(hidden, pooled.to(target) if pooled is not None else None)


def encode_prompts(
    model: LoadedModel,
    captions: list[str],
    *,
    clip_skip: int = 1,
    device: torch.device | str | None = None,
) -> TextEmbedding:
    """Tokenize and encode captions; the result moved to device when given."""
    emb = encode_tokens(model, tokenize(model, captions), clip_skip=clip_skip)
    return emb.to(device) if device is not None else emb


def sdxl_add_time_ids(
    original_size: tuple[int, int],
    crop_top_left: tuple[int, int],
    target_size: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """SDXL's size conditioning [6]: original (h, w), crop (top, left), target (h, w)."""
    values = [*original_size, *crop_top_left, *target_size]
    if len(values) != 6:
        raise ValueError(f"sizes must be (height, width) pairs, got {original_size}, {crop_top_left}, {target_size}")
    return torch.tensor(values, dtype=dtype, device=device)


def sdxl_added_cond_kwargs(pooled: torch.Tensor, time_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The UNet's added_cond_kwargs for a batch: pooled [B, P], time_ids [B, 6] (or [6], shared)."""
    if time_ids.dim() == 1:
        time_ids = time_ids.unsqueeze(0).expand(pooled.shape[0], -1)
    return {"text_embeds": pooled, "time_ids": time_ids.to(device=pooled.device, dtype=pooled.dtype)}


def clip_token_ids(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """CLIP ids [B, 77], padded and truncated as every pipeline does."""
    return tokenizer(list(captions), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                     return_tensors="pt").input_ids


def t5_token_ids(tokenizer: Any, captions: list[str], length: int) -> torch.Tensor:
    """T5 ids [B, length]; the FLUX and SD3 pipelines pad to the full length, so training does too."""
    return tokenizer(list(captions), padding="max_length", max_length=length, truncation=True,
                     add_special_tokens=True, return_tensors="pt").input_ids


# Each flow-matching family's own module (conditioning, timestep convention, transformer call), imported when
# first asked for: the families' pipelines and tokenizers are heavy.
_FAMILY_MODULES = {"flux": "flux", "sd3": "sd3", "zimage": "zimage", "qwen_image": "qwen_image",
                   "chroma": "chroma", "flux2_klein": "flux2"}


def family_module(family: str) -> Any:
    """The module that knows a flow-matching family's conditioning and transformer call."""
    import importlib

    name = _FAMILY_MODULES.get(family)
    if name is None:
        raise ValueError(f"{family} is not a flow-matching transformer family")
    return importlib.import_module(f"loratui.models.{name}")


def t5_length(model: LoadedModel, configured: int) -> int:
    """model.t5_max_length, or the family's own length when it is 0."""
    return configured if configured > 0 else family_module(model.family).default_t5_length(model)


def encode_flow_captions(model: LoadedModel, captions: list[str], *, t5_max_length: int = 0) -> TextEmbedding:
    """Text tokens and pooled vector of a FLUX or SD3 model for each caption."""
    return family_module(model.family).encode(model, captions, t5_length(model, t5_max_length))
