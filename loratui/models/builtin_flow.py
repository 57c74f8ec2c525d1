"""The tiny flow-matching built-ins: ``builtin:tiny-flux``, ``builtin:tiny-sd3`` and ``builtin:tiny-chroma``.

Built like the UNet built-ins (fixed seeds, random weights, saved once as a
diffusers folder) with the real models' structure: Flux's double-stream and
single-stream blocks with the guidance embedding, SD3's joint blocks; CLIP-L
and T5 (Flux), CLIP-L, CLIP-G and T5 (SD3); a VAE with 16 latent channels,
the published scaling and shift factors and no quant convolutions; the
published flow-matching schedulers. Widths are tiny so a step takes
milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# T5 sequence length of the built-ins' tokenizer; the real models use 512 (Flux-dev) or 256.
TINY_T5_LENGTH = 32
_SAMPLE_SIZE = 16  # latents; x8 = 128 px, as the UNet built-ins


def _seed(offset: int) -> None:
    from loratui.models.builtin import _seed as seed

    seed(offset)


def _vae(*, scaling_factor: float, shift_factor: float) -> Any:
    from loratui.models.builtin import _vae as tiny_vae

    # 16 latent channels, centred by shift_factor; Flux's and SD3's VAEs have no quant
    # convolutions around the latent.
    return tiny_vae(scaling_factor, seed=11, latent_channels=16, layers_per_block=1, shift_factor=shift_factor,
                    quant_conv=False)


def _clip(seed_offset: int, *, hidden_size: int, projection: bool, hidden_act: str, pad_token_id: int) -> Any:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from loratui.models.builtin import _text_config

    _seed(seed_offset)
    config = _text_config(hidden_act=hidden_act, projection_dim=hidden_size, hidden_size=hidden_size,
                          pad_token_id=pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(seed_offset: int, d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    from loratui.models import tokenizer as chartok

    _seed(seed_offset)
    # T5 v1.1 layout (gated GELU feed-forward, relative position buckets), as FLUX and SD3 use.
    config = T5Config(
        vocab_size=chartok.t5_vocab_size(), d_model=d_model, d_kv=8, d_ff=d_model * 2, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def _flux_transformer() -> Any:
    from diffusers import FluxTransformer2DModel

    _seed(12)
    # diffusers' own tiny Flux, with Flux's 16 latent channels packed 2x2 (64 inputs)
    # and two blocks of each kind so block numbering means something.
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )


def _sd3_transformer() -> Any:
    from diffusers import SD3Transformer2DModel

    _seed(13)
    # SD3.5-Medium's structure (joint blocks with the second self-attention in the first
    # blocks, qk RMS norm) at a tiny width, with the 64-wide heads every SD3 has (ComfyUI reads the width
    # as 64 x depth); the context is the T5 width, pooled the two CLIPs'.
    return SD3Transformer2DModel(
        sample_size=_SAMPLE_SIZE, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=64, num_attention_heads=2, joint_attention_dim=96, caption_projection_dim=128,
        pooled_projection_dim=64, pos_embed_max_size=32, qk_norm="rms_norm", dual_attention_layers=(0,),
    )


def _chroma_transformer() -> Any:
    from diffusers import ChromaTransformer2DModel

    _seed(17)
    # The tiny FLUX's blocks; the approximator keeps Chroma's shape (64 input channels: timestep, zero
    # guidance and the modulation index, each sinusoidally embedded) at a tiny hidden width.
    return ChromaTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8), approximator_num_channels=64,
        approximator_hidden_dim=64, approximator_layers=2,
    )


def _flow_scheduler(**kwargs: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **kwargs)


def build_flow_pipeline(name: str, work_dir: Path) -> Any:
    from diffusers import ChromaPipeline, FluxPipeline, StableDiffusion3Pipeline

    from loratui.models import tokenizer as chartok

    eos = chartok.eos_token_id()
    bang = chartok.char_vocab()["!"]
    t5_tok = chartok.build_char_t5_tokenizer(model_max_length=TINY_T5_LENGTH)
    if name == "tiny-flux":
        return FluxPipeline(
            vae=_vae(scaling_factor=0.3611, shift_factor=0.1159),
            text_encoder=_clip(14, hidden_size=32, projection=False, hidden_act="quick_gelu", pad_token_id=eos),
            tokenizer=chartok.build_char_tokenizer(work_dir / "tok1"),
            text_encoder_2=_t5(15, 32),
            tokenizer_2=t5_tok,
            transformer=_flux_transformer(),
            # FLUX.1-dev's scheduler: the shift grows with the image's token count.
            scheduler=_flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                      base_image_seq_len=256, max_image_seq_len=4096),
        )
    if name == "tiny-sd3":
        return StableDiffusion3Pipeline(
            vae=_vae(scaling_factor=1.5305, shift_factor=0.0609),
            text_encoder=_clip(14, hidden_size=32, projection=True, hidden_act="quick_gelu", pad_token_id=eos),
            tokenizer=chartok.build_char_tokenizer(work_dir / "tok1"),
            text_encoder_2=_clip(16, hidden_size=32, projection=True, hidden_act="gelu", pad_token_id=bang),
            tokenizer_2=chartok.build_char_tokenizer(work_dir / "tok2", pad_token="!"),
            text_encoder_3=_t5(15, 96),
            tokenizer_3=t5_tok,
            transformer=_sd3_transformer(),
            scheduler=_flow_scheduler(shift=3.0),
        )
    if name == "tiny-zimage":
        from loratui.models import builtin_zimage

        return builtin_zimage.build(work_dir)
    if name == "tiny-qwen-image":
        from loratui.models import builtin_qwen_image

        return builtin_qwen_image.build(work_dir)
    if name == "tiny-chroma":
        return ChromaPipeline(
            vae=_vae(scaling_factor=0.3611, shift_factor=0.1159),  # FLUX.1's VAE, as Chroma ships it
            text_encoder=_t5(15, 32),
            tokenizer=t5_tok,
            transformer=_chroma_transformer(),
            # ChromaPipeline computes FLUX's token-count shift for every call; a dynamic-shifting
            # scheduler (FLUX.1-dev's settings) is the one that applies it.
            scheduler=_flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                      base_image_seq_len=256, max_image_seq_len=4096),
        )
    if name == "tiny-flux2-klein":
        from loratui.models.builtin_flux2 import build_flux2_klein_pipeline

        return build_flux2_klein_pipeline()
    raise ValueError(f"not a flow-matching built-in: {name}")
