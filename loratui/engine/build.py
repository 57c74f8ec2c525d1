"""Setting a run up: a ``TrainingSession`` from a project folder and its config.

The setup half of the trainer, kept apart so the loop in ``trainer.py`` reads top
to bottom and so ``loratui bench`` and the wizard's estimate can build the same
session without running a whole loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from loratui.config import ProjectConfig
from loratui.data.concepts import empty_concepts, scan_project
from loratui.data.holdout import project_holdout
from loratui.data.report import concept_lines
from loratui.engine import distributed
from loratui.engine.cuda_setup import configure_cuda_backends
from loratui.engine.dataset import PreparedDataset, prepare_dataset
from loratui.engine.ema import LoraEMA
from loratui.engine.latent_cache import CachedText, LatentCache, TextCache
from loratui.engine.optimizers import build_optimizer, optimizer_advice
from loratui.engine.session import StatusFn, TrainingSession
from loratui.errors import UserError
from loratui.lora.inject import inject_lora
from loratui.lora.layer import LoRANetwork
from loratui.memory import hold as memory
from loratui.models.loader import LoadedModel, load_model
from loratui.models.text import encode_flow_captions, family_module, t5_length
from loratui.project import ProjectPaths

log = logging.getLogger("loratui")


class DatasetEmpty(UserError):
    pass


def load_project_model(paths: ProjectPaths, cfg: ProjectConfig, *, dtype: torch.dtype,
                       device: str | torch.device, denoiser_device: str | torch.device | None = None) -> LoadedModel:
    """The project's base model, with relative paths read inside the project and the family and
    prediction-type overrides applied."""
    return load_model(
        paths.model_spec(cfg), config_source=paths.config_source(cfg), allow_pickle=cfg.model.allow_pickle,
        family=None if cfg.model.family == "auto" else cfg.model.family,
        prediction_type=None if cfg.model.prediction_type == "auto" else cfg.model.prediction_type,
        dtype=dtype, device=device, denoiser_device=denoiser_device)


def base_model_folder(paths: ProjectPaths, cfg: ProjectConfig) -> Path | None:
    """The diffusers folder the base model's configs come from, when there is one on disk."""
    from loratui.models import builtin
    from loratui.models.probe import resolve_spec

    kind, where = resolve_spec(paths.model_spec(cfg))
    if kind == "builtin":
        return builtin.ensure_builtin(str(where))
    if kind == "folder":
        return Path(where)
    config = paths.config_source(cfg)
    if kind == "single_file" and config and Path(config).expanduser().is_dir():
        return Path(config).expanduser()
    return None


def _weight_dtype(precision: str, device: torch.device) -> torch.dtype:
    # Half-precision base weights only where they are fast; the CPU runs fp32.
    if device.type == "cpu":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def _make_accelerator(cfg: ProjectConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    precision = cfg.train.precision
    if not torch.cuda.is_available() and precision != "no":
        log.info("precision %s needs a GPU; running fp32 on the CPU", precision)
        precision = "no"
    handlers = [
        # Explicit, not the library default: see distributed.PROCESS_GROUP_TIMEOUT (the runner has usually
        # set the process group up already, with the same value).
        InitProcessGroupKwargs(timeout=distributed.PROCESS_GROUP_TIMEOUT),
        # The LoRA alpha buffers never change; re-sending them before every forward is a wasted collective.
        DistributedDataParallelKwargs(broadcast_buffers=False),
    ]
    cpu = distributed.launched_distributed() and distributed.use_cpu()
    return Accelerator(mixed_precision=precision, cpu=cpu, kwargs_handlers=handlers)


def _make_optimizer(cfg: ProjectConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer in ("prodigy", "adamw_schedulefree"):
        return build_optimizer(cfg, groups)
    if t.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError:
            from loratui.config import ConfigError

            raise ConfigError("train.optimizer = \"adamw8bit\" needs bitsandbytes: `pip install bitsandbytes` "
                              "(CUDA only), or use \"adamw\".") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=t.weight_decay)
    # The fused kernel is one launch for all LoRA tensors instead of several per tensor, and it can skip
    # a non-finite update on the device (see optimizer_step). It exists for CPU and CUDA alike.
    return torch.optim.AdamW(groups, weight_decay=t.weight_decay, fused=True)


def build_session(paths: ProjectPaths, cfg: ProjectConfig, *, status: StatusFn,
                  ranks: distributed.Ranks | None = None) -> TrainingSession:
    ranks = ranks or distributed.Ranks()
    acc = _make_accelerator(cfg)
    device = acc.device
    if device.type == "cuda":
        configure_cuda_backends()
    weight_dtype = _weight_dtype(cfg.train.precision, device)

    images_dir = paths.images(cfg)
    status(f"scanning {images_dir}" if not cfg.data.concepts else f"scanning {len(cfg.data.concepts)} concepts")
    scan = scan_project(cfg, paths.root)
    empty = empty_concepts(scan) if cfg.data.concepts else []
    if empty:
        raise DatasetEmpty(". ".join(empty) + ".")
    if not scan.usable:
        reason = scan.error or scan.summary_line()
        raise DatasetEmpty(f"no usable images in {images_dir}: {reason}. Run `loratui check` on the project "
                           "to see every problem.")
    for line in concept_lines(scan):
        status(line.strip())
    for rec in scan.skipped:
        status(f"skipping {rec.rel}: {'; '.join(rec.problems)}", "warning")
    holdout = project_holdout(paths, cfg, scan.usable)
    if holdout.source != "off":
        status(holdout.note)

    status(f"loading {cfg.model.base}")
    if ranks.distributed:
        # A built-in model is built once, by rank 0, while the others wait: two processes building the
        # same cache folder at once would remove each other's half-built copy.
        if ranks.is_main:
            base_model_folder(paths, cfg)
        ranks.barrier("preparing the base model", timeout_s=distributed.CACHE_BARRIER_TIMEOUT_S)
    model = load_project_model(paths, cfg, dtype=weight_dtype, device=device,
                               denoiser_device=memory.load_device(cfg, device))
    if model.is_flow:
        _check_flow_settings(cfg, model)
    held = memory.store_base(cfg, model, device, status, processes=acc.num_processes)
    for module in [model.unet, model.vae, *model.text_encoders]:
        module.requires_grad_(False)
    # The SDXL VAE overflows in fp16; latents are made once, so fp32 costs little.
    model.vae.to(device, torch.float32)

    status("encoding images (cached in .cache/)")
    cache = LatentCache(paths.cache, model.fingerprint) if cfg.data.cache_latents else None

    def progress(i: int, n: int, name: str) -> None:
        if n and (i == n or i % max(1, n // 20) == 0):
            status(f"encoding images {i}/{n}", progress=i / n)

    latent_encoder = getattr(family_module(model.family), "encode_latents", None) if model.is_flow else None
    prepare = dict(vae=model.vae, scaling_factor=model.vae_scaling_factor, shift_factor=model.vae_shift_factor,
                   latent_encoder=latent_encoder,
                   cache=cache, concepts=scan.concepts, prior_loss_weight=cfg.train.prior_loss_weight, batch_size=cfg.train.batch_size, seed=cfg.train.seed, flip=cfg.data.flip)
    trained = holdout.trained
    if ranks.distributed and cache is not None:
        # Each rank encodes its share into the cache; after the barrier every rank reads all of it from
        # there, so all hold the very same latents (and a rank on another GPU model cannot drift).
        prepare_dataset(trained[ranks.rank::ranks.world_size], progress=progress, **prepare)
        status("waiting for the other processes to finish encoding")
        ranks.barrier("encoding images", timeout_s=distributed.CACHE_BARRIER_TIMEOUT_S)
        progress = None
        cache.hits = 0
    dataset = prepare_dataset(trained, progress=progress, **prepare)
    for line in dataset.skipped:
        status(f"skipping {line}", "warning")
    if not dataset.items:
        raise DatasetEmpty(f"none of the images in {images_dir} could be encoded; see the messages above.")
    held_out = prepare_dataset(holdout.held_out, vae=model.vae, scaling_factor=model.vae_scaling_factor,
                               shift_factor=model.vae_shift_factor, latent_encoder=latent_encoder, cache=cache,
                               batch_size=1, seed=cfg.train.seed,
                               flip=False).items
    if cache is not None:
        # Sharded, the second pass read back this rank's own share too: those were encoded, not found.
        found = cache.hits - (cache.misses if ranks.distributed else 0)
        status(f"latents: {found} from cache, {cache.misses} encoded")
    model.vae.to("cpu")  # not needed until sampling; frees GPU memory for the UNet

    networks, groups, trained_tes = _inject(cfg, model, paths)
    memory.place_model(held, cfg, model, device, status)
    unet = model.unet
    if cfg.train.gradient_checkpointing:
        memory.enable_checkpointing(cfg, unet, status)
        for te in trained_tes:
            te.gradient_checkpointing_enable()
    if device.type == "cuda" and cfg.train.channels_last and not model.is_flow:
        unet.to(memory_format=torch.channels_last)
    for te in model.text_encoders:
        te.to(device)
    optimizer = _make_optimizer(cfg, groups)
    # A denoiser the memory options placed (part of it in host memory) must stay where it is.
    model.unet, optimizer = acc.prepare(unet, optimizer, device_placement=[False if held.places_itself else None, None])
    if trained_tes and acc.num_processes > 1:
        # Text-encoder LoRA gradients must be averaged across GPUs too, so those encoders get DDP as well.
        wrapped = acc.prepare(*trained_tes)
        wrapped = list(wrapped) if isinstance(wrapped, (list, tuple)) else [wrapped]
        swap = {id(te): w for te, w in zip(trained_tes, wrapped)}
        model.text_encoders = [swap.get(id(te), te) for te in model.text_encoders]
        trained_tes = wrapped
    for line in optimizer_advice(cfg):
        status(line, "warning")
    ema = None
    if cfg.train.ema_decay > 0:
        ema = LoraEMA([kp for net in networks.values() for kp in net.named_parameters()], cfg.train.ema_decay)
    if cfg.train.compile and device.type == "cuda":
        model.unet = torch.compile(model.unet, mode=cfg.train.compile_mode)
    # The T5 length changes a flow model's text tokens, so it is part of their cache identity.
    text_key = f"{model.fingerprint}-t5-{t5_length(model, cfg.model.t5_max_length)}" if model.is_flow \
        else model.fingerprint
    text_cache = None if cfg.lora.train_text_encoder else TextCache(paths.cache, text_key, cfg.model.clip_skip)
    if text_cache is not None and model.is_flow and not cfg.data.shuffle_tags:
        _cache_all_captions(cfg, model, dataset, text_cache, status)
    return TrainingSession(cfg=cfg, accelerator=acc, model=model, networks=networks, dataset=dataset, scan=scan,
                           weight_dtype=weight_dtype, text_cache=text_cache, optimizer=optimizer,
                           trained_text_encoders=trained_tes, held_out=held_out, holdout_note=holdout.note,
                           ema=ema)


def _cache_all_captions(cfg: ProjectConfig, model: LoadedModel, dataset: PreparedDataset, cache: TextCache,
                        status: StatusFn) -> None:
    """Encode every caption training can draw now, then move the text encoders off the GPU.

    Without tag shuffling the captions are known in advance: each image's with the trigger word, and the
    empty one caption dropout uses. FLUX's and SD3's T5-XXL alone takes 9.5 GB in bf16; once every caption
    is cached it is not needed until sampling.
    """
    import random

    from loratui.data.captions import build_caption

    captions = sorted({build_caption(item.caption, trigger_word=cfg.data.trigger_word, rng=random.Random(0))
                       for item in dataset.items} | ({""} if cfg.data.caption_dropout > 0 else set()))
    status(f"encoding {len(captions)} captions (cached in .cache/)")
    session_like = _CaptionEncoder(cfg, model)
    for start in range(0, len(captions), 16):
        cache.get_many(captions[start:start + 16], session_like)
    for te in model.text_encoders:
        te.to("cpu")  # sampling brings them back for its prompts


class _CaptionEncoder:
    """The cache's compute function for a model and config (what TrainingSession._encode_for_cache does)."""

    def __init__(self, cfg: ProjectConfig, model: LoadedModel) -> None:
        self.cfg, self.model = cfg, model

    def __call__(self, captions: list[str]) -> list[CachedText]:
        with torch.no_grad():
            emb = encode_flow_captions(self.model, captions, t5_max_length=self.cfg.model.t5_max_length)
        hidden = emb.hidden.float().cpu()
        pooled = emb.pooled.float().cpu() if emb.pooled is not None else None  # FLUX.2 has no pooled vector
        return [CachedText(hidden[i], pooled[i] if pooled is not None else None) for i in range(len(captions))]


def _check_flow_settings(cfg: ProjectConfig, model: LoadedModel) -> None:
    from loratui.config import ConfigError

    if cfg.data.bucket_step % 16 or cfg.data.resolution % 16:
        raise ConfigError(
            f"data.bucket_step ({cfg.data.bucket_step}) and data.resolution ({cfg.data.resolution}) must be "
            f"multiples of 16 for {model.family}: its transformer takes 2x2 patches of the 8x-downsampled latents. "
            "Set data.bucket_step = 64 (or 16, 32, 48...).")
    for name, value in (("min_snr_gamma", cfg.train.min_snr_gamma), ("noise_offset", cfg.train.noise_offset)):
        if value:
            raise ConfigError(
                f"train.{name} = {value:g} belongs to the UNets' noise schedule; {model.family} is trained with flow "
                f"matching, where it has no meaning. Set train.{name} = 0 (σ is chosen by train.timestep_sampling).")
    from loratui.lora.naming import components_for

    module = family_module(model.family)
    if cfg.lora.train_text_encoder and components_for(model.family) == ("unet",):
        raise ConfigError(
            f"lora.train_text_encoder = true, but {model.family} conditions on {module.TEXT_ENCODER_NAME} alone, "
            "which gets no LoRA: its loaders read transformer LoRAs only, and loratui (like sd-scripts and "
            "musubi-tuner) does not train it. Set lora.train_text_encoder = false.")
    family_check = getattr(module, "check_settings", None)
    if family_check is not None:
        family_check(cfg, model)


def _inject(cfg: ProjectConfig, model: LoadedModel,
            paths: ProjectPaths) -> tuple[dict[str, LoRANetwork], list[dict[str, Any]], list]:
    gen = torch.Generator("cpu").manual_seed(cfg.train.seed)
    lc = cfg.lora
    kind = {"kind": lc.type, "lokr_factor": lc.lokr_factor}
    networks = {"unet": inject_lora(model.unet, component="unet", family=model.family, preset=lc.preset,
                                    rank=lc.rank, alpha=lc.alpha, generator=gen, **kind)}
    trained_tes = []
    if lc.train_text_encoder:
        from loratui.lora.naming import components_for

        # Only the CLIP encoders get LoRA; FLUX's and SD3's T5 come last and stay frozen.
        names = list(components_for(model.family)[1:])
        for name, te in zip(names, model.text_encoders):
            networks[name] = inject_lora(te, component=name, family=model.family, preset=lc.preset,
                                         rank=lc.rank, alpha=lc.alpha, generator=gen, **kind)
            trained_tes.append(te)
    if lc.init_lora:
        from loratui.config import ConfigError
        from loratui.lora.continue_from import apply_lora_file
        from loratui.lora.fileformat import load_lora_file

        try:
            apply_lora_file(load_lora_file(paths.input_path(lc.init_lora), family=model.family), networks)
        except (ValueError, OSError) as exc:  # LoRAFileError is a ValueError
            raise ConfigError(f"lora.init_lora = {lc.init_lora!r}: {exc}") from None
    groups = [{"params": list(networks["unet"].parameters()), "lr": cfg.train.learning_rate}]
    te_params = [p for k, n in networks.items() if k != "unet" for p in n.parameters()]
    if te_params:
        groups.append({"params": te_params, "lr": cfg.train.text_encoder_lr})
    return networks, groups, trained_tes
