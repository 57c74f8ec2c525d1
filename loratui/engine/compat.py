"""Which config changes a resume can take, and which would make it a different run."""

from __future__ import annotations

from typing import Any

from loratui.config import ProjectConfig, field_spec

# Changing any of these changes the weights, the data order or the schedule a
# checkpoint was built on: resuming across them would not continue the same run.
BREAKING = (
    "model.base", "model.family", "model.prediction_type", "model.clip_skip",
    "data.resolution", "data.bucket_step", "data.flip", "data.trigger_word", "data.shuffle_tags",
    "data.keep_tokens", "data.caption_dropout", "data.concepts", "data.alpha_mask", "data.masks",
    "lora.rank", "lora.alpha", "lora.preset", "lora.train_text_encoder", "lora.type", "lora.lokr_factor",
    "train.batch_size", "train.grad_accum", "train.seed", "train.optimizer", "train.lr_scheduler",
    "train.warmup_steps", "train.learning_rate", "train.text_encoder_lr", "train.weight_decay",
    "train.min_snr_gamma", "train.noise_offset", "train.prior_loss_weight", "validation.split",
    "model.t5_max_length", "train.timestep_sampling", "train.sigmoid_scale", "train.flow_shift",
    "train.guidance_scale",
)
# Schedules that depend on the run's length make the total steps breaking too.
LENGTH_DEPENDENT = ("linear", "cosine", "cosine_with_restarts", "polynomial")
HARMLESS = (
    "train.max_steps", "train.epochs", "train.precision", "train.gradient_checkpointing",
    "train.gradient_checkpointing_every", "train.compile", "train.compile_mode",
    "train.channels_last", "train.max_grad_norm", "model.base_weights", "train.ema_decay",
    "save.every_n_steps", "save.keep", "save.output_name", "save.precision", "save.format",
    "sample.every_n_steps", "sample.steps", "sample.guidance", "sample.width", "sample.height", "sample.prompts",
    "save.keep_best", "validation.folder", "validation.every_n_steps", "advisor.enabled", "advisor.budget_hours",
    "logging.tensorboard",
    # How the base is held: a run may resume on a smaller card with a smaller base or more swapping.
    "model.base_precision", "train.blocks_to_swap", "train.activation_offload",
)


def _get(cfg: ProjectConfig, path: str) -> Any:
    section, name = path.split(".")
    value = getattr(getattr(cfg, section), name)
    if isinstance(value, list):
        return [getattr(v, "__dict__", v) for v in value]
    return value


def config_digest(cfg: ProjectConfig, dataset_fingerprint: str, *, processes: int = 1) -> dict[str, Any]:
    digest = {path: _get(cfg, path) for path in BREAKING + HARMLESS}
    digest["dataset"] = dataset_fingerprint
    digest["processes"] = processes
    return digest


def _is_default(path: str, value: Any) -> bool:
    try:
        return field_spec(path).default == value
    except KeyError:
        return False


def describe_differences(saved: dict[str, Any], now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(breaking, harmless) changes, one readable line each."""
    breaking, harmless = [], []
    length_matters = now.get("train.lr_scheduler") in LENGTH_DEPENDENT
    saved = {"processes": 1, **saved}  # checkpoints from before multi-process runs were one process
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) == now.get(key):
            continue
        if key not in saved and _is_default(key, now.get(key)):
            continue  # a setting added after the checkpoint was written, left at its default: nothing changed
        if key == "processes":
            # The data position is one number, so any count of processes continues the same data order;
            # only the number of images per optimizer step changes with it.
            per_step = now.get("train.batch_size", 1) * now.get("train.grad_accum", 1)
            before = saved.get(key, 1)  # checkpoints from before this was recorded had one process
            if before == now.get(key, 1):
                continue
            harmless.append(f"processes: {before} → {now.get(key)} (each optimizer step now takes "
                            f"{per_step * now.get(key, 1)} images instead of {per_step * before})")
            continue
        if key == "dataset":
            breaking.append("the images or captions changed (a file was added, removed or edited)")
            continue
        line = f"{key}: {saved.get(key)!r} → {now.get(key)!r}"
        if key in BREAKING or (length_matters and key in ("train.max_steps", "train.epochs")):
            breaking.append(line)
        else:
            harmless.append(line)
    return breaking, harmless

