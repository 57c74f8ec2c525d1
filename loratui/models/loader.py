"""Load a base model from a built-in name, a folder, one file or a hub id.

What the spec is comes from ``probe`` (cheap, headers and configs only);
the weights then load through diffusers, by ``from_pretrained`` for folders,
built-ins and hub ids and ``from_single_file`` for one checkpoint file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loratui.models import builtin
from loratui.models.family import FamilyError, check_family, check_prediction_type, native_resolution
from loratui.models.probe import (
    ModelInfo,
    ModelLoadError,
    folder_info,
    probe_model,
    read_safetensors_header,
    resolve_spec,
)

__all__ = ["LoadedModel", "ModelInfo", "ModelLoadError", "load_model", "make_noise_scheduler", "probe_model"]


@dataclass
class LoadedModel:
    """A base model's components, ready for training and sampling."""

    spec: str
    source_kind: str
    family: str
    prediction_type: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    # The training scheduler: DDPM over the model's own noise schedule.
    noise_scheduler: Any
    fingerprint: str
    resolution: int
    vae_scaling_factor: float
    # The scheduler the model ships for sampling (DDIM, Euler, PNDM, ...).
    sample_scheduler: Any = None
    pipeline_config: dict[str, Any] = field(default_factory=dict)

    def make_pipeline(self, scheduler: Any = None) -> Any:
        """A diffusers pipeline over these same components (no safety checker)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        parts: dict[str, Any] = {
            "vae": self.vae,
            "text_encoder": self.text_encoders[0],
            "tokenizer": self.tokenizers[0],
            "unet": self.unet,
            "scheduler": scheduler if scheduler is not None else self.sample_scheduler,
        }
        if self.family == "sdxl":
            zeros = self.pipeline_config.get("force_zeros_for_empty_prompt", True)
            pipe = StableDiffusionXLPipeline(
                **parts, text_encoder_2=self.text_encoders[1], tokenizer_2=self.tokenizers[1],
                force_zeros_for_empty_prompt=zeros,
            )
        else:
            pipe = StableDiffusionPipeline(
                **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
            )
        # tqdm bars would scribble over the dashboard.
        pipe.set_progress_bar_config(disable=True)
        return pipe


# --- loading --------------------------------------------------------------


def load_model(
    spec: str,
    *,
    config_source: str | None = None,
    allow_pickle: bool = False,
    family: str | None = None,
    prediction_type: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a base model; family and prediction_type override detection."""
    kind, where = resolve_spec(spec)
    if kind == "builtin":
        # Built-ins load from their cache folder exactly like a user's folder.
        try:
            where = builtin.ensure_builtin(str(where))
        except OSError as exc:
            raise ModelLoadError(
                f"cannot write the built-in model to {builtin.cache_root()}: {exc.strerror or exc}; "
                "free some space or set LORATUI_CACHE_DIR to a writable folder"
            ) from None
        info = folder_info(spec, "builtin", Path(where))
    else:
        info = probe_model(spec, config_source=config_source, allow_pickle=allow_pickle)
    try:
        fam = check_family(family) if family else info.family
        pred = check_prediction_type(prediction_type) if prediction_type else info.prediction_type
    except FamilyError as exc:
        raise ModelLoadError(f"model settings: {exc}") from None

    try:
        pipe = _load_pipeline(kind, where, fam, config_source, dtype)
        text_encoders, tokenizers = _text_components(pipe, fam, spec)
    except ModelLoadError as exc:
        if fam == info.family:
            raise
        raise ModelLoadError(
            f"{exc}. model.family is set to {fam} but the model looks like {info.family}; try model.family = auto"
        ) from None
    # Moved one by one: pipe.to() warns about fp16 on CPU, which is fine here
    # (the trainer casts what runs on CPU).
    for module in [pipe.unet, pipe.vae, *text_encoders]:
        module.to(device)
    sample_scheduler = pipe.scheduler
    if sample_scheduler.config.get("prediction_type") != pred:
        sample_scheduler = type(sample_scheduler).from_config(sample_scheduler.config, prediction_type=pred)
    # Frozen unless the trainer says otherwise: a base model is never trained
    # whole, and eval mode turns off the text encoders' dropout.
    for module in [pipe.unet, pipe.vae, *text_encoders]:
        module.requires_grad_(False)
        module.eval()
    return LoadedModel(
        spec=spec,
        source_kind=info.source_kind,
        family=fam,
        prediction_type=pred,
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        noise_scheduler=make_noise_scheduler(pipe.scheduler.config, pred),
        fingerprint=_fingerprint(kind, where, config_source),
        resolution=native_resolution(fam, pred, dict(pipe.unet.config)),
        vae_scaling_factor=float(pipe.vae.config.get("scaling_factor", 0.18215)),
        sample_scheduler=sample_scheduler,
        # The pipeline's own flags (e.g. SDXL's force_zeros_for_empty_prompt),
        # not its component entries, for make_pipeline to pass on.
        pipeline_config={k: v for k, v in pipe.config.items() if isinstance(v, (bool, int, float)) and k[0] != "_"},
    )


def _text_components(pipe: Any, family: str, spec: str) -> tuple[list[Any], list[Any]]:
    names = ["", "_2"] if family == "sdxl" else [""]
    encoders = [getattr(pipe, f"text_encoder{n}", None) for n in names]
    tokenizers = [getattr(pipe, f"tokenizer{n}", None) for n in names]
    if any(m is None for m in encoders + tokenizers) or pipe.unet is None or pipe.vae is None:
        raise ModelLoadError(f"{spec} is missing a UNet, VAE, text encoder or tokenizer; loratui needs all of them")
    return encoders, tokenizers


def make_noise_scheduler(scheduler_config: Any, prediction_type: str) -> Any:
    """A DDPM scheduler over the model's betas, for adding noise in training."""
    import inspect

    from diffusers import DDPMScheduler

    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(scheduler_config).items() if k in accepted}
    config["prediction_type"] = prediction_type
    # Only DDPM's step() clips; training never calls it, sampling elsewhere.
    config["clip_sample"] = False
    return DDPMScheduler(**config)


def _pipeline_class(family: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _load_pipeline(kind: str, where: Path | str, family: str, config_source: str | None, dtype: torch.dtype) -> Any:
    cls = _pipeline_class(family)
    # Image encoders and feature extractors serve IP-adapters and the safety
    # checker; training never uses them, so they are not loaded.
    extra: dict[str, Any] = {"feature_extractor": None, "image_encoder": None}
    if family != "sdxl":
        extra.update(safety_checker=None, requires_safety_checker=False)
    extra.update(_dtype_kwarg(dtype))
    try:
        with builtin.quiet_progress():
            if kind in ("builtin", "folder"):
                _check_folder_weights(Path(where))
                return cls.from_pretrained(str(where), local_files_only=True, **extra)
            if kind == "hub":
                return cls.from_pretrained(str(where), **extra)
            single: dict[str, Any] = {}
            if config_source:
                cfg = Path(config_source).expanduser()
                single = {"config": str(cfg), "local_files_only": True} if cfg.is_dir() else {"config": config_source}
            return cls.from_single_file(str(where), **single, **extra)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types for bad input
        raise ModelLoadError(_explain_failure(kind, where, config_source, exc)) from exc


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    # Newer diffusers renamed torch_dtype to dtype and warn on the old name.
    from diffusers.pipelines import pipeline_utils

    return {"dtype": dtype} if hasattr(pipeline_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _explain_failure(kind: str, where: Path | str, config_source: str | None, exc: Exception) -> str:
    detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if kind == "hub":
        return (
            f"could not load {where} from the Hugging Face hub ({detail}); "
            "check the id and your network, log in for gated models, or download it and point at the folder"
        )
    if kind == "single_file":
        advice = (
            "check that the file is a complete SD1/SD2/SDXL checkpoint"
            if config_source
            else "without network, set model.config_source to a local diffusers folder of the same family"
        )
        return f"could not load {where} ({detail}); {advice}"
    return f"could not load the model folder {where} ({detail}); it may be incomplete, copy or download it again"


def _check_folder_weights(folder: Path) -> None:
    """Validate every safetensors header so a cut-short file is named precisely."""
    for path in sorted(folder.glob("*/*.safetensors")):
        read_safetensors_header(path)


def _fingerprint(kind: str, where: Path | str, config_source: str | None) -> str:
    """Short identity of the weights for cache keys; cheap, not a content hash.

    Files are identified by name, size and modification time, which change
    whenever weights are replaced or edited; hub ids by the id alone. A
    built-in counts as a folder: a rebuild (another torch may draw other
    random weights) then invalidates caches made from the old one.
    """
    h = hashlib.sha256(("folder" if kind == "builtin" else kind).encode())
    if kind == "hub":
        h.update(str(where).encode())
    else:
        root = Path(where)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            st = p.stat()
            rel = p.name if p == root else p.relative_to(root).as_posix()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        if kind == "single_file" and config_source:
            h.update(f"config:{config_source}".encode())
    return h.hexdigest()[:16]
