"""``builtin:tiny-flux2-klein``: FLUX.2 klein's structure at a tiny width, built offline.

As the other built-ins: fixed seeds, random weights, saved once as a
diffusers folder. It has what ``Flux2KleinPipeline`` defines: a
``Flux2Transformer2DModel`` (double-stream blocks with the shared
modulation, single-stream blocks with the fused q/k/v/MLP projection, 4-axis
rotary ids, no guidance embedding, as the klein base models), a Qwen3 causal
LM with the 27 layers whose 9th, 18th and 27th outputs condition the
transformer, a byte-level Qwen2 tokenizer with Qwen3's chat template made in
code, and an ``AutoencoderKLFlux2`` (32 latent channels, its batch-norm
statistics set to non-trivial values so the normalisation is exercised, and
a narrow posterior as a trained VAE has).
"""

from __future__ import annotations

from typing import Any

# Qwen3's chat template for what the pipeline asks of it: user turns, the assistant's generation
# prompt and, with thinking switched off, the empty thinking block Qwen3 then expects.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_TEXT_LENGTH = 64  # tokens per caption in the built-in (the real models use 512)
_QWEN_WIDTH = 16


def _seed(offset: int) -> None:
    from loratui.models.builtin import _seed as seed

    seed(offset)


def build_qwen_tokenizer() -> Any:
    """A byte-level Qwen2 tokenizer whose vocabulary is the 256 byte symbols and Qwen's special tokens (no
    merges, so every caption splits into bytes), with Qwen3's chat template."""
    from transformers import Qwen2Tokenizer

    from loratui.models.tokenizer import byte_level_alphabet

    vocab = {tok: i for i, tok in enumerate([SPECIALS[0], *byte_level_alphabet()])}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=_TEXT_LENGTH)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIALS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _qwen3(vocab_size: int, pad_token_id: int) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    _seed(21)
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=_QWEN_WIDTH, intermediate_size=2 * _QWEN_WIDTH, num_hidden_layers=27,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=_TEXT_LENGTH * 2,
        tie_word_embeddings=True, pad_token_id=pad_token_id, use_cache=False,
    )
    return Qwen3ForCausalLM(config).eval()


def _vae() -> Any:
    import torch
    from diffusers import AutoencoderKLFlux2

    _seed(22)
    vae = AutoencoderKLFlux2(
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, latent_channels=32, norm_num_groups=8,
        sample_size=128,
    )
    g = torch.Generator().manual_seed(23)
    with torch.no_grad():
        # Trained statistics stand in for the real VAE's: normalising by mean 0 and variance 1 would hide a
        # normalisation applied in the wrong layout.
        vae.bn.running_mean.copy_(torch.randn(vae.bn.num_features, generator=g) * 0.1)
        vae.bn.running_var.copy_(torch.rand(vae.bn.num_features, generator=g) * 0.5 + 0.05)
        # A trained VAE's posterior is narrow; a random one's spread (std ~1, more once normalised) would
        # drown each picture's latent in noise and leave nothing to learn.
        vae.quant_conv.bias[vae.config.latent_channels:] -= 6.0
    return vae.eval()


def _transformer() -> Any:
    from diffusers import Flux2Transformer2DModel

    _seed(24)
    # 32 latent channels patchified 2x2 (128 inputs); the text width is three Qwen3 layers side by side.
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * _QWEN_WIDTH, timestep_guidance_channels=32,
        mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )


def build_flux2_klein_pipeline() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    tokenizer = build_qwen_tokenizer()
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                  base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                  max_image_seq_len=4096),
        vae=_vae(),
        text_encoder=_qwen3(len(tokenizer), tokenizer.pad_token_id),
        tokenizer=tokenizer,
        transformer=_transformer(),
        is_distilled=False,
    )
