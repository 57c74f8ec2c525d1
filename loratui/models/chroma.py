"""Chroma: what it loads, how it conditions, how its transformer is called.

Chroma (lodestones/Chroma1-HD) is FLUX.1-schnell with CLIP removed: T5 alone
conditions it, there is no pooled vector and no guidance value (its
"approximator" network turns the timestep alone into every block's
modulation). Two things set it apart from FLUX in training, both from the
reference implementations (lodestone-rock/flow ``train_chroma.py``, ComfyUI,
sd-scripts' ``--model_type chroma --apply_t5_attn_mask``):

- T5 runs with the tokenizer's attention mask, and the transformer masks the
  T5 padding too, all but the first padding token, which every text token
  keeps attending to.
- The mask is a keep/drop mask. diffusers' ``ChromaPipeline`` builds it as a
  float tensor, which ``scaled_dot_product_attention`` adds to the scores
  instead of masking (diffusers issues #12116, #13619); loratui hands the
  transformer a boolean mask, in training and in its own samples alike.

Latents, packing, position ids and the resolution-dependent shift are FLUX's
(``loratui.models.flux``). Chroma has no pooled vector, so the ``pooled``
slot of its text embedding carries the transformer's text mask [B, L] (1 keep,
0 drop): it then travels through the text cache and the batches unchanged.
The timestep goes in as σ in [0, 1], as for FLUX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from loratui.models import flux
from loratui.models.text import TextEmbedding
from loratui.models.wrapped import unwrap_model

if TYPE_CHECKING:
    from loratui.models.loader import LoadedModel

PIPELINE = "ChromaPipeline"
TEXT_SUFFIXES = ("",)  # text_encoder (T5) only
TEXT_ENCODER_NAME = "T5"
T5_LENGTH = 512  # ChromaPipeline's max_sequence_length, and what Chroma was trained with
LEARNING_RATE = 1e-4


def default_t5_length(model: LoadedModel) -> int:
    return min(T5_LENGTH, int(getattr(model.tokenizers[0], "model_max_length", T5_LENGTH) or T5_LENGTH))


def transformer_text_mask(tokenizer_mask: torch.Tensor) -> torch.Tensor:
    """The tokens the transformer attends to: every real token and the first padding token after them."""
    lengths = tokenizer_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(tokenizer_mask.shape[1], device=tokenizer_mask.device)[None, :]
    return positions <= lengths


def encode(model: LoadedModel, captions: list[str], t5_length: int) -> TextEmbedding:
    """T5 hidden states [B, L, D] (T5 run with the padding masked) and the transformer's text mask [B, L]."""
    (t5,) = model.text_encoders
    tokens = model.tokenizers[0](list(captions), padding="max_length", max_length=t5_length, truncation=True,
                                 add_special_tokens=True, return_tensors="pt")
    device = next(t5.parameters()).device
    mask = tokens.attention_mask.to(device)
    hidden = t5(tokens.input_ids.to(device), attention_mask=mask, output_hidden_states=False)[0]
    return TextEmbedding(hidden, transformer_text_mask(mask).to(hidden.dtype))


def attention_mask(text_mask: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """Boolean keep-mask over [text tokens, image tokens] for each picture: image tokens are always kept."""
    keep = text_mask > 0.5
    return torch.cat([keep, torch.ones(keep.shape[0], image_tokens, dtype=torch.bool, device=keep.device)], dim=1)


def predict(transformer: Any, noisy: torch.Tensor, sigmas: torch.Tensor, cond: TextEmbedding,
            *, guidance: float, dtype: torch.dtype) -> torch.Tensor:
    """The transformer's velocity prediction for latents [B, 16, H, W] at σ [B]; Chroma takes no guidance."""
    b, _, h, w = noisy.shape
    device = noisy.device
    if cond.pooled is None:
        raise ValueError("Chroma's text embedding carries its attention mask; this one has none")
    mask = attention_mask(cond.pooled.to(device), (h // 2) * (w // 2))
    _keep_mask_under_checkpointing(transformer, mask)
    out = transformer(
        hidden_states=flux.pack(noisy).to(dtype),
        timestep=sigmas.to(device=device, dtype=dtype),
        encoder_hidden_states=cond.hidden.to(dtype),
        txt_ids=torch.zeros(cond.hidden.shape[1], 3, device=device, dtype=dtype),
        img_ids=flux.image_ids(h, w, device, dtype),
        attention_mask=mask,
        return_dict=False,
    )[0]
    return flux.unpack(out, h, w)


def _keep_mask_under_checkpointing(transformer: Any, mask: torch.Tensor) -> None:
    """Give the single blocks the mask when diffusers' gradient checkpointing leaves it out.

    ``ChromaTransformer2DModel`` passes ``attention_mask`` to its single blocks only when it does not
    checkpoint them, so with gradient checkpointing the padding would silently take part in attention
    and the loss would change. A pre-hook on each single block supplies the mask of the current call;
    it stays in place so the backward pass's recomputation sees the very same mask.
    """
    model = unwrap_model(transformer)
    model._loratui_chroma_mask = mask
    if getattr(model, "_loratui_chroma_hooks", False):
        return

    def add_mask(block: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if kwargs.get("attention_mask") is not None or len(args) > 3:
            return None
        current = getattr(model, "_loratui_chroma_mask", None)
        hidden = args[0] if args else kwargs.get("hidden_states")
        if current is None or hidden is None or tuple(current.shape) != tuple(hidden.shape[:2]):
            return None
        return args, {**kwargs, "attention_mask": current}

    for block in model.single_transformer_blocks:
        block.register_forward_pre_hook(add_mask, with_kwargs=True)
    model._loratui_chroma_hooks = True


TRANSFORMER_CLASS = "ChromaTransformer2DModel"


def from_original(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A Chroma file (ComfyUI's layout) as the diffusers model's state dict, with the widths of ``config``."""
    from loratui.models.chroma_checkpoint import original_to_chroma

    return original_to_chroma(state, config)


def finish_meta_model(transformer: Any) -> None:
    """Chroma's modulation-index embedding is a buffer computed at construction and kept out of the state
    dict; a model built on the meta device has none, so that one module is built again for real."""
    from diffusers.models.transformers.transformer_chroma import ChromaCombinedTimestepTextProjEmbeddings

    rows, width = transformer.time_text_embed.mod_proj.shape
    transformer.time_text_embed = ChromaCombinedTimestepTextProjEmbeddings(num_channels=width // 2, out_dim=rows)


def check_settings(cfg: Any, model: LoadedModel) -> None:
    """Settings Chroma cannot honour, refused before training (the engine's flow checks come first)."""
    from loratui.config import ConfigError

    if cfg.train.guidance_scale != 1.0:
        raise ConfigError(
            f"train.guidance_scale = {cfg.train.guidance_scale:g} is set, but Chroma has no guidance embedding "
            "(its guidance input is always 0); remove train.guidance_scale or set it to 1.0.")


def check_latent_size(height: int, width: int) -> None:
    if height % 2 or width % 2:
        raise ValueError(f"Chroma packs latents 2x2 as FLUX does; a {height}x{width} latent cannot be packed "
                         "(use data.bucket_step and data.resolution in multiples of 16)")


def sample_prompt_kwargs(model: LoadedModel, prompt: str, negative: str, t5_length: int,
                         device: torch.device) -> dict[str, Any]:
    """The pipeline's prompt arguments with boolean masks (see the module docstring), so samples see what
    training saw; Chroma samples with classifier-free guidance and a negative prompt."""
    with torch.no_grad():
        pos = encode(model, [prompt], t5_length)
        neg = encode(model, [negative or ""], t5_length)
    return {"prompt_embeds": pos.hidden.to(device), "prompt_attention_mask": pos.pooled.to(device) > 0.5,
            "negative_prompt_embeds": neg.hidden.to(device),
            "negative_prompt_attention_mask": neg.pooled.to(device) > 0.5}
