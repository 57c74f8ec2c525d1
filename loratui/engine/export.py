"""The final LoRA file and the metadata loaders and galleries read from it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
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
    ("sd3", "flow"): "sd3", ("flux", "flow"): "flux1",
    ("zimage", "flow"): "zimage", ("qwen_image", "flow"): "qwen_image",
    ("chroma", "flow"): "chroma", ("flux2_klein", "flow"): "flux2",
}


def base_model_version(family: str, prediction_type: str) -> str:
    """The ``ss_base_model_version`` A1111 uses to show a LoRA only beside matching models."""
    return _BASE_VERSION[(family, prediction_type)]


def trigger_words(cfg: ProjectConfig) -> list[str]:
    """The trigger words the training captions carry: data.trigger_word, or with [[data.concepts]] each
    trained (not regularization) concept's own or inherited one."""
    words = [] if cfg.data.concepts else [cfg.data.trigger_word]
    for concept in cfg.data.concepts:
        get = concept.get if isinstance(concept, dict) else lambda k, c=concept: getattr(c, k, None)
        if not get("is_reg"):
            own = get("trigger_word")
            words.append(cfg.data.trigger_word if own is None else own)
    return list(dict.fromkeys(w.strip() for w in words if w and w.strip()))


def _description(cfg: ProjectConfig, family: str, steps: int, num_images: int, trigger: str) -> str:
    from loratui.models.family import FAMILY_NAMES

    kind = {"lora": "LoRA", "dora": "DoRA", "loha": "LoHa", "lokr": "LoKr"}.get(cfg.lora.type, cfg.lora.type)
    base = FAMILY_NAMES.get(family, family)
    text = f"A {kind} for {base}, trained with loratui for {steps} steps"
    text += f", {num_images} images per epoch." if num_images else "."
    return text + (f" Trigger word: {trigger}." if trigger else "")


def training_metadata(cfg: ProjectConfig, *, family: str, prediction_type: str, steps: int, epoch: int,
                      num_images: int, tag_frequency: dict[str, dict[str, int]],
                      started_at: float | None = None, variant: str | None = None,
                      thumbnail: str | None = None) -> dict[str, str]:
    """kohya's ``ss_*`` keys and the SAI ModelSpec keys; every value a string, as safetensors requires.

    ``modelspec.hash_sha256`` and ``sshs_*`` are added when the file's bytes exist (fileformat).
    """
    from loratui.lora import modelspec
    from loratui.publish.licenses import license_for

    res = cfg.data.resolution
    now = time.time()
    network_module, args = network_args(cfg.lora.type, cfg.lora.preset, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                                        lokr_factor=cfg.lora.lokr_factor)
    trigger = ", ".join(trigger_words(cfg))
    meta = {
        "ss_output_name": cfg.output_name,
        "ss_network_module": network_module,
        "ss_network_dim": str(cfg.lora.rank),
        "ss_network_alpha": f"{cfg.lora.alpha:g}",
        "ss_network_args": json.dumps(args),
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
        "modelspec.sai_model_spec": modelspec.SPEC_VERSION,
        "modelspec.architecture": modelspec.architecture(family, prediction_type, variant),
        "modelspec.implementation": modelspec.implementation(family),
        "modelspec.title": cfg.output_name,
        "modelspec.description": cfg.publish.description.strip() or _description(cfg, family, steps, num_images,
                                                                                 trigger),
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.prediction_type": modelspec.prediction_type(prediction_type),
    }
    optional = {
        "modelspec.author": cfg.publish.author.strip(),
        "modelspec.tags": cfg.publish.tags.strip(),
        "modelspec.trigger_phrase": trigger,
        "modelspec.usage_hint": f"Trigger word: {trigger}" if trigger else "",
        "modelspec.thumbnail": thumbnail or "",
    }
    chosen = license_for(family, variant, cfg.publish.license)
    if chosen is not None:
        optional["modelspec.license"] = chosen.spec_value
    meta.update({k: v for k, v in optional.items() if v})
    if cfg.model.clip_skip > 1:
        meta["modelspec.encoder_layer"] = str(cfg.model.clip_skip)
    return meta


def caption_tag_frequency(trained: Iterable[tuple[str, str, str, str]]) -> dict[str, dict[str, int]]:
    """kohya's ``ss_tag_frequency`` from (concept name, image path in its folder, caption, trigger word) of
    every trained image: per folder (a concept's own folder by its name), each tag of the caption as trained
    (trigger word included, lower case as sd-scripts counts them) once per image."""
    import random

    from loratui.data.captions import build_caption, tag_frequency

    by_folder: dict[str, list[str]] = {}
    rng = random.Random(0)
    for concept, rel, caption, trigger in trained:
        folder = str(Path(rel).parent)
        text = build_caption(caption, trigger_word=trigger, rng=rng)
        by_folder.setdefault(folder if folder != "." else concept, []).append(text.lower())
    return {folder: tag_frequency(caps) for folder, caps in by_folder.items()}


def project_tag_frequency(cfg: ProjectConfig, root: Path) -> tuple[dict[str, dict[str, int]], int]:
    """(``ss_tag_frequency``, images per epoch) of a project's images as a run trains them (held-out ones left
    out), read from the caption files: for an export made from a checkpoint, without the training session."""
    from loratui.data.concepts import scan_project
    from loratui.data.holdout import mark_held_out, project_holdout
    from loratui.project import ProjectPaths

    from loratui.errors import UserError

    try:
        report = scan_project(cfg, root)
        if report.usable:
            mark_held_out(report, project_holdout(ProjectPaths(root), cfg, report.usable))
    except (UserError, OSError):
        return {}, 0  # the images moved since training: the weights still export, without the counts
    concepts = report.concepts
    trained = [(concepts[r.concept].name, r.rel, r.caption or "", concepts[r.concept].trigger_word)
               if concepts else ("images", r.rel, r.caption or "", cfg.data.trigger_word) for r in report.trained]
    return caption_tag_frequency(trained), report.images_per_epoch


def sample_thumbnail(samples_dir: Path | None, up_to_step: int | None = None) -> str | None:
    """``modelspec.thumbnail`` from the newest sample image, or None when the run made none."""
    from loratui.lora.modelspec import thumbnail_data_url
    from loratui.publish.samples import newest_samples

    found = newest_samples(samples_dir, up_to_step) if samples_dir is not None else []
    return thumbnail_data_url(found[0].path) if found else None


def export_lora(session: TrainingSession, cfg: ProjectConfig, path: Path, *, steps: int, epoch: int,
                fmt: str = "kohya", started_at: float | None = None, samples_dir: Path | None = None) -> Path:
    from loratui.lora.fileformat import save_diffusers, save_kohya
    from loratui.lora.modelspec import model_variant

    model = session.model
    meta = training_metadata(
        cfg, family=model.family, prediction_type=model.prediction_type, steps=steps, epoch=epoch,
        num_images=session.dataset.plan.images_per_epoch, tag_frequency=caption_tag_frequency(
            (concept.name, item.rel, item.caption, concept.trigger_word) for item in session.dataset.items
            for concept in (session.dataset.concepts[item.concept],)),
        started_at=started_at, variant=model_variant(model.family, dict(getattr(model.unet, "config", {}) or {})),
        thumbnail=sample_thumbnail(samples_dir, steps))
    path.parent.mkdir(parents=True, exist_ok=True)
    save = save_diffusers if fmt == "diffusers" else save_kohya
    save(path, session.networks, meta, dtype=SAVE_DTYPES[cfg.save.precision])
    return path
