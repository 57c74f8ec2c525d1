"""The final LoRA file and the metadata loaders and galleries read from it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import loratui
from loratui.config import ProjectConfig
from loratui.lora.variants import network_args

if TYPE_CHECKING:
    from loratui.engine.session import TrainingSession

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

_BASE_VERSION = {
    ("sd1", "epsilon"): "sd_v1", ("sd1", "v_prediction"): "sd_v1_v",
    ("sd2", "epsilon"): "sd_v2", ("sd2", "v_prediction"): "sd_v2_v",
    ("sdxl", "epsilon"): "sdxl_base_v1-0", ("sdxl", "v_prediction"): "sdxl_base_v1-0",
    ("sd3", "flow"): "sd3", ("flux", "flow"): "flux1", ("chroma", "flow"): "chroma",
    ("flux2_klein", "flow"): "flux2",
}
_ARCHITECTURE = {
    "sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-512/lora",
    "sdxl": "stable-diffusion-xl-v1-base/lora",
    "sd3": "stable-diffusion-v3-medium/lora", "flux": "flux-1-dev/lora", "chroma": "chroma/lora",
    "flux2_klein": "flux-2-klein/lora",
}


_IMPLEMENTATION = {"sdxl": "https://github.com/Stability-AI/generative-models",
                   "sd3": "https://github.com/Stability-AI/sd3.5",
                   "flux": "https://github.com/black-forest-labs/flux",
                   "chroma": "https://github.com/lodestone-rock/flow",
                   "flux2_klein": "https://github.com/black-forest-labs/flux2"}


def base_model_version(family: str, prediction_type: str) -> str:
    """The ``ss_base_model_version`` A1111 uses to show a LoRA only beside matching models."""
    return _BASE_VERSION[(family, prediction_type)]


def training_metadata(cfg: ProjectConfig, *, family: str, prediction_type: str, steps: int, epoch: int,
                      num_images: int, tag_frequency: dict[str, dict[str, int]],
                      started_at: float | None = None) -> dict[str, str]:
    """kohya's ``ss_*`` keys and the SAI modelspec keys; every value a string, as safetensors requires."""
    res = cfg.data.resolution
    if family == "sd2" and prediction_type == "v_prediction":
        architecture = "stable-diffusion-v2-768-v/lora"
    else:
        architecture = _ARCHITECTURE[family]
    now = time.time()
    network_module, args = network_args(cfg.lora.type, cfg.lora.lokr_factor)
    meta = {
        "ss_output_name": cfg.output_name,
        "ss_network_module": network_module,
        "ss_network_dim": str(cfg.lora.rank),
        "ss_network_alpha": f"{cfg.lora.alpha:g}",
        "ss_network_args": json.dumps({"preset": cfg.lora.preset, **args}),
        "ss_base_model_version": base_model_version(family, prediction_type),
        "ss_v2": str(family == "sd2"),
        "ss_sd_model_name": cfg.model.base,
        "ss_resolution": f"({res}, {res})",
        "ss_steps": str(steps),
        "ss_epoch": str(epoch),
        "ss_num_train_images": str(num_images),
        "ss_learning_rate": f"{cfg.train.learning_rate:g}",
        "ss_unet_lr": f"{cfg.train.learning_rate:g}",
        "ss_text_encoder_lr": f"{cfg.train.text_encoder_lr:g}" if cfg.lora.train_text_encoder else "0",
        "ss_lr_scheduler": cfg.train.lr_scheduler,
        "ss_lr_warmup_steps": str(cfg.train.warmup_steps),
        "ss_optimizer": cfg.train.optimizer,
        "ss_batch_size_per_device": str(cfg.train.batch_size),
        "ss_gradient_accumulation_steps": str(cfg.train.grad_accum),
        "ss_mixed_precision": cfg.train.precision,
        "ss_seed": str(cfg.train.seed),
        "ss_clip_skip": str(cfg.model.clip_skip),
        "ss_min_snr_gamma": f"{cfg.train.min_snr_gamma:g}",
        "ss_noise_offset": f"{cfg.train.noise_offset:g}",
        "ss_caption_dropout_rate": f"{cfg.data.caption_dropout:g}",
        "ss_flip_aug": str(cfg.data.flip),
        "ss_shuffle_caption": str(cfg.data.shuffle_tags),
        "ss_keep_tokens": str(cfg.data.keep_tokens),
        "ss_tag_frequency": json.dumps(tag_frequency, ensure_ascii=False),
        "ss_training_started_at": f"{started_at or now:.0f}",
        "ss_training_finished_at": f"{now:.0f}",
        "ss_training_comment": f"trained with loratui {loratui.__version__}",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": architecture,
        "modelspec.implementation": _IMPLEMENTATION.get(family, "diffusers"),
        "modelspec.title": cfg.output_name,
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.prediction_type": {"v_prediction": "v", "flow": "flow"}.get(prediction_type, "epsilon"),
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
    }
    if cfg.model.clip_skip > 1:
        meta["modelspec.encoder_layer"] = str(cfg.model.clip_skip)
    return meta


def export_lora(session: TrainingSession, cfg: ProjectConfig, path: Path, *, steps: int, epoch: int,
                fmt: str = "kohya", started_at: float | None = None) -> Path:
    from loratui.data.captions import tag_frequency
    from loratui.lora.fileformat import save_diffusers, save_kohya

    ds = session.dataset
    tags = {folder: tag_frequency(caps) for folder, caps in ds.captions_by_folder().items()}
    meta = training_metadata(
        cfg, family=session.model.family, prediction_type=session.model.prediction_type, steps=steps,
        epoch=epoch,
        num_images=ds.plan.images_per_epoch, tag_frequency=tags, started_at=started_at)
    path.parent.mkdir(parents=True, exist_ok=True)
    save = save_diffusers if fmt == "diffusers" else save_kohya
    save(path, session.networks, meta, dtype=SAVE_DTYPES[cfg.save.precision])
    return path
