"""Tiny built-in models: real Stable Diffusion structure, random weights.

``builtin:tiny-sd``, ``builtin:tiny-sd2`` and ``builtin:tiny-sdxl`` are built
in code from a fixed seed and saved once into the user cache as ordinary
diffusers folders; after that they load exactly like any other folder. The
widths are tiny so a training step takes milliseconds on a CPU, but the block
layout, module names, VAE downsampling (8x, 4 latent channels), scaling
factors, text-encoder flavours and scheduler settings are the real models',
so buckets, LoRA keys and every code path mean the same as for SD.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Bumped whenever the built-in weights or layout change, so a stale cache
# folder is never mistaken for the current model.
BUILTIN_VERSION = "v1"
BUILTIN_PREFIX = "builtin:"

BUILTIN_MODELS: dict[str, str] = {
    "tiny-sd": "tiny random SD 1.5 layout (epsilon, 128 px) for trying loratui without a download",
    "tiny-sd2": "tiny random SD 2.x layout (v-prediction, OpenCLIP-style text encoder, 128 px)",
    "tiny-sdxl": "tiny random SDXL layout (two text encoders, size conditioning, 128 px)",
    "tiny-sd3": "tiny random SD3.5 layout (joint transformer blocks, CLIP-L + CLIP-G + T5, flow matching, 128 px)",
    "tiny-flux": "tiny random FLUX.1-dev layout (double and single blocks, CLIP-L + T5, guidance, flow matching, 128 px)",
    "tiny-zimage": "tiny random Z-Image layout (refiners and single-stream layers, Qwen3, FLUX VAE, 128 px)",
    "tiny-qwen-image": "tiny random Qwen-Image layout (dual-stream MMDiT, Qwen2.5-VL, 3D VAE, 128 px)",
    "tiny-chroma": "tiny random Chroma layout (FLUX blocks with an approximator, T5 only with its mask, flow matching, "
                   "128 px)",
    "tiny-flux2-klein": "tiny random FLUX.2 klein layout (shared-modulation blocks, Qwen3 text encoder, FLUX.2 VAE "
                        "with batch-norm latents, flow matching, 128 px)",
}

# (family, prediction type) of each built-in, known without building it.
BUILTIN_FAMILIES: dict[str, tuple[str, str]] = {
    "tiny-sd": ("sd1", "epsilon"),
    "tiny-sd2": ("sd2", "v_prediction"),
    "tiny-sdxl": ("sdxl", "epsilon"),
    "tiny-sd3": ("sd3", "flow"),
    "tiny-flux": ("flux", "flow"),
    "tiny-zimage": ("zimage", "flow"),
    "tiny-qwen-image": ("qwen_image", "flow"),
    "tiny-chroma": ("chroma", "flow"),
    "tiny-flux2-klein": ("flux2_klein", "flow"),
}

# One seed per component, so building a component never depends on what was
# built before it.
_SEED = 20240601


def _seed(offset: int) -> None:
    # torch is imported here, not at the top, so that probing a spec (which
    # imports this module for the names and cache paths) stays torch-free.
    import torch

    torch.manual_seed(_SEED + offset)


# SD's training noise schedule, shared by all three families.
_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}

# A sample_size of 16 latents times the VAE's 8x gives a 128 px native size.
_SAMPLE_SIZE = 16
BUILTIN_RESOLUTION = _SAMPLE_SIZE * 8


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide diffusers'/transformers' loading and saving bars, which would scribble over the TUI."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            dlog.enable_progress_bar()
        if was[1]:
            tlog.enable_progress_bar()


def cache_root() -> Path:
    """Where loratui keeps rebuildable data: $LORATUI_CACHE_DIR, else XDG."""
    from loratui.userdirs import user_dir

    return user_dir("LORATUI_CACHE_DIR", "XDG_CACHE_HOME", ".cache")


def builtin_dir(name: str) -> Path:
    return cache_root() / "builtin" / f"{name}-{BUILTIN_VERSION}"


def _check_name(name: str) -> str:
    if name.startswith(BUILTIN_PREFIX):
        name = name[len(BUILTIN_PREFIX) :]
    if name not in BUILTIN_MODELS:
        known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)
        raise ValueError(f"unknown built-in model {BUILTIN_PREFIX}{name}; the built-ins are {known}")
    return name


# --- components -----------------------------------------------------------


def _vae(scaling_factor: float, *, seed: int = 1, latent_channels: int = 4, layers_per_block: int = 2,
         shift_factor: float | None = None, quant_conv: bool = True) -> Any:
    from diffusers import AutoencoderKL

    _seed(seed)
    # Four encoder blocks -> three downsamples -> 8x, as in every family's VAE.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=_SAMPLE_SIZE * 8,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )


def _text_config(*, hidden_act: str, projection_dim: int, hidden_size: int, pad_token_id: int) -> Any:
    from transformers import CLIPTextConfig

    from loratui.models import tokenizer as chartok

    return CLIPTextConfig(
        vocab_size=chartok.vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=chartok.MODEL_MAX_LENGTH,
        hidden_act=hidden_act,
        projection_dim=projection_dim,
        bos_token_id=chartok.bos_token_id(),
        eos_token_id=chartok.eos_token_id(),
        pad_token_id=pad_token_id,
    )


def _text_encoder(seed_offset: int, *, with_projection: bool = False, **cfg: Any) -> Any:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    _seed(seed_offset)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(_text_config(**cfg)).eval()


def _sd_unet(*, cross_attention_dim: int, linear_projection: bool) -> Any:
    from diffusers import UNet2DConditionModel

    _seed(2)
    return UNet2DConditionModel(
        sample_size=_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        # SD's widths are 320/640/1280/1280; same doubling, far fewer channels.
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        # diffusers reads attention_head_dim as the number of heads here
        # (SD1 has 8); every width above divides by it.
        attention_head_dim=4,
        use_linear_projection=linear_projection,
    )


def _sdxl_unet(*, cross_attention_dim: int, pooled_dim: int, time_embed_dim: int) -> Any:
    from diffusers import UNet2DConditionModel

    _seed(2)
    return UNet2DConditionModel(
        sample_size=_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        # SDXL has (1, 2, 10); the last level is cut to 2 to stay small.
        transformer_layers_per_block=(1, 2, 2),
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        # Heads per level, chosen like SDXL's (5, 10, 20) so every head is
        # the same width.
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # pooled text embedding + six size/crop numbers, each embedded.
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_embed_dim,
    )


def _sd_scheduler(prediction_type: str) -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        **_BETAS,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _sdxl_scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        **_BETAS, steps_offset=1, timestep_spacing="leading", prediction_type="epsilon"
    )


# --- pipelines ------------------------------------------------------------


def build_pipeline(name: str, work_dir: Path) -> Any:
    """Build the named built-in pipeline in memory (tokenizer files go to work_dir)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from loratui.models import tokenizer as chartok

    name = _check_name(name)
    if BUILTIN_FAMILIES[name][1] == "flow":
        from loratui.models.builtin_flow import build_flow_pipeline

        return build_flow_pipeline(name, work_dir)
    eos = chartok.eos_token_id()
    bang = chartok.char_vocab()["!"]
    if name == "tiny-sd":
        return StableDiffusionPipeline(
            vae=_vae(0.18215),
            text_encoder=_text_encoder(3, hidden_act="quick_gelu", projection_dim=32, hidden_size=32, pad_token_id=eos),
            tokenizer=chartok.build_char_tokenizer(work_dir / "tok1"),
            unet=_sd_unet(cross_attention_dim=32, linear_projection=False),
            scheduler=_sd_scheduler("epsilon"),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if name == "tiny-sd2":
        return StableDiffusionPipeline(
            vae=_vae(0.18215),
            text_encoder=_text_encoder(3, hidden_act="gelu", projection_dim=48, hidden_size=48, pad_token_id=bang),
            tokenizer=chartok.build_char_tokenizer(work_dir / "tok1", pad_token="!"),
            unet=_sd_unet(cross_attention_dim=48, linear_projection=True),
            scheduler=_sd_scheduler("v_prediction"),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    te1 = _text_encoder(3, hidden_act="quick_gelu", projection_dim=32, hidden_size=32, pad_token_id=eos)
    te2 = _text_encoder(
        4, with_projection=True, hidden_act="gelu", projection_dim=32, hidden_size=48, pad_token_id=bang
    )
    return StableDiffusionXLPipeline(
        vae=_vae(0.13025),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=chartok.build_char_tokenizer(work_dir / "tok1"),
        tokenizer_2=chartok.build_char_tokenizer(work_dir / "tok2", pad_token="!"),
        # SDXL conditions on the concatenated penultimate states of both encoders.
        unet=_sdxl_unet(cross_attention_dim=32 + 48, pooled_dim=32, time_embed_dim=8),
        scheduler=_sdxl_scheduler(),
    )


def ensure_builtin(name: str) -> Path:
    """Return the cache folder of a built-in model, building it on first use.

    The build is written into a temporary sibling and renamed into place, so
    an interrupted build never leaves a folder that looks finished.
    """
    from loratui.models import tokenizer as chartok

    name = _check_name(name)
    target = builtin_dir(name)
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.tok-") as tok_dir:
            pipe = build_pipeline(name, Path(tok_dir))
            with quiet_progress():
                pipe.save_pretrained(str(tmp), safe_serialization=True)
            # Real SD folders also carry vocab.json/merges.txt beside
            # tokenizer.json; with them the folder loads with slow and fast
            # CLIP tokenizers alike, whichever transformers is installed.
            for saved in tmp.glob("tokenizer*"):
                # The T5 and Qwen tokenizers (Flux, SD3, Z-Image, Qwen-Image, Chroma, FLUX.2) are whole in their
                # tokenizer.json.
                config = saved / "tokenizer_config.json"
                if saved.is_dir() and "CLIPTokenizer" in config.read_text(encoding="utf-8"):
                    chartok.write_char_tokenizer_files(saved)
        if target.exists() and not (target / "model_index.json").is_file():
            # A half folder without model_index.json (not ours: ours are
            # renamed in whole) is in the way.
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same build first; theirs is as good.
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_builds(target: Path) -> None:
    """Delete temporary folders left by builds that were killed midway."""
    for leftover in target.parent.glob(f".{target.name}.*"):
        # A fresh one may belong to a build running right now in another
        # process; an hour is far longer than any build takes.
        try:
            age = time.time() - leftover.stat().st_mtime
        except OSError:
            continue
        if age > 3600:
            shutil.rmtree(leftover, ignore_errors=True)
