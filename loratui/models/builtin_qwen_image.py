"""``builtin:tiny-qwen-image``: Qwen-Image's structure at a tiny width, random weights.

Qwen-Image's parts as diffusers lays them out: the dual-stream MMDiT blocks
(``img_mod``/``txt_mod`` modulation, joint attention with ``add_*_proj``,
``img_mlp``/``txt_mlp``) over 2x2-packed latents with its scaled 3-axis RoPE; a
Qwen2.5-VL text encoder (language model and vision tower) with a character-level
Qwen tokenizer made in code, whose merges make the prompt template's system prefix
34 tokens long as Qwen's own tokenizer does; the 3D causal VAE (8x spatial, 16
latent channels) with its per-channel latent mean and std; the published
flow-matching scheduler with the resolution-dependent shift. Built from a fixed
seed and saved once like the other built-ins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEXT_WIDTH = 32
# The words of QwenImagePipeline's prompt template prefix, each one token in Qwen's vocabulary.
TEMPLATE_WORDS = ("system", "Describe", " the", " image", " by", " detailing", " color", " shape", " size",
                  " texture", " quantity", " text", " spatial", " relationships", " of", " objects", " and",
                  " background", "user")
TOKENIZER_LENGTH = 128  # the template takes 34 + 13 of them; 94 are left for a caption


def _text_encoder(seed_offset: int) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from loratui.models.builtin import _seed
    from loratui.models.qwen_tokenizer import pad_token_id, vocab_size

    _seed(seed_offset)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab_size(TEMPLATE_WORDS), hidden_size=TEXT_WIDTH, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=pad_token_id(),
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]}),
        # Qwen-Image reads the language model only; the vision tower is there because the real encoder has one.
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_WIDTH,
                           fullatt_block_indexes=[0], patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _vae() -> Any:
    from diffusers import AutoencoderKLQwenImage

    from loratui.models.builtin import _seed

    _seed(31)
    # Qwen-Image's 3D VAE (base width 96, widths x1/2/4/4, two temporal downsamples) at base width 8 and
    # one residual block per level; the published per-channel latent statistics.
    return AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                  temperal_downsample=[False, True, True])


def _transformer() -> Any:
    from diffusers import QwenImageTransformer2DModel

    from loratui.models.builtin import _seed

    _seed(32)
    # Qwen-Image's 60 blocks of 24 heads x 128 (RoPE axes 16/56/56) cut to two blocks of two 32-wide heads.
    return QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                       attention_head_dim=32, num_attention_heads=2, joint_attention_dim=TEXT_WIDTH,
                                       guidance_embeds=False, axes_dims_rope=(8, 12, 12))


def build(work_dir: Path) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    from loratui.models.qwen_tokenizer import build_qwen_tokenizer

    del work_dir
    return QwenImagePipeline(
        vae=_vae(),
        text_encoder=_text_encoder(33),
        tokenizer=build_qwen_tokenizer(model_max_length=TOKENIZER_LENGTH, words=TEMPLATE_WORDS),
        transformer=_transformer(),
        # Qwen-Image's scheduler: the shift grows with the image's token count (exponential time shift).
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
            base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential"),
    )
