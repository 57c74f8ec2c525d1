"""``builtin:tiny-zimage``: Z-Image's structure at a tiny width, random weights.

Z-Image-Turbo's parts as diffusers lays them out: the single-stream transformer
with its noise refiner (modulated), context refiner (not modulated) and main
layers, qk RMS norm, SwiGLU feed-forwards and 3-axis RoPE whose axes add up to
the head width; a Qwen3 decoder as the text encoder with a character-level Qwen
tokenizer and chat template made in code; the FLUX.1 VAE's 16 latent channels
with its scaling and shift; the published flow-matching scheduler (fixed shift
3). Built from a fixed seed and saved once like the other built-ins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEXT_LENGTH = 64  # tokens; the chat template alone takes 28 of them with this tokenizer
TEXT_WIDTH = 32


def _qwen3(seed_offset: int) -> Any:
    from transformers import Qwen3Config, Qwen3Model

    from loratui.models.builtin import _seed
    from loratui.models.qwen_tokenizer import pad_token_id, vocab_size

    _seed(seed_offset)
    config = Qwen3Config(
        vocab_size=vocab_size(), hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=TEXT_LENGTH * 2,
        rope_theta=1000000.0, tie_word_embeddings=True, pad_token_id=pad_token_id(),
    )
    return Qwen3Model(config).eval()


def _transformer() -> Any:
    from diffusers import ZImageTransformer2DModel

    from loratui.models.builtin import _seed

    _seed(21)
    # Z-Image's 30 layers of width 3840 (30 heads of 128, RoPE axes 32/48/48) cut to two layers of
    # two 32-wide heads with the axes in the same proportion; one block in each refiner.
    return ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=TEXT_WIDTH, rope_theta=256.0,
        t_scale=1000.0, axes_dims=[8, 12, 12], axes_lens=[256, 128, 128],
    )


def build(work_dir: Path) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    from loratui.models.builtin_flow import _vae
    from loratui.models.qwen_tokenizer import build_qwen_tokenizer

    del work_dir  # the tokenizer lives in memory until the pipeline is saved
    return ZImagePipeline(
        vae=_vae(scaling_factor=0.3611, shift_factor=0.1159),  # FLUX.1's VAE, which Z-Image uses
        text_encoder=_qwen3(22),
        tokenizer=build_qwen_tokenizer(model_max_length=TEXT_LENGTH),
        transformer=_transformer(),
        # Z-Image-Turbo's scheduler: a fixed shift of 3, no resolution-dependent shift.
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
    )
