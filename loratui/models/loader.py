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
from loratui.models.family import (
    FAMILY_NAMES,
    FLOW_FAMILIES,
    FamilyError,
    check_family,
    check_prediction_type,
    native_resolution,
)
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
    # Subtracted from VAE latents before scaling (FLUX and SD3 VAEs; 0 for the UNet families).
    vae_shift_factor: float = 0.0

    @property
    def is_flow(self) -> bool:
        """A flow-matching transformer (SD3, FLUX); ``unet`` then holds the transformer."""
        return self.family in FLOW_FAMILIES

    def make_pipeline(self, scheduler: Any = None) -> Any:
        """A diffusers pipeline over these same components (no safety checker)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        if self.is_flow:
            return self._make_flow_pipeline(scheduler)
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

    def _make_flow_pipeline(self, scheduler: Any) -> Any:
        import diffusers

        from loratui.models.text import family_module

        fam = family_module(self.family)
        parts: dict[str, Any] = {"vae": self.vae, "transformer": self.unet,
                                 "scheduler": scheduler if scheduler is not None else self.sample_scheduler}
        for suffix, encoder, tokenizer in zip(fam.TEXT_SUFFIXES, self.text_encoders, self.tokenizers):
            parts[f"text_encoder{suffix}"] = encoder
            parts[f"tokenizer{suffix}"] = tokenizer
        pipe = getattr(diffusers, fam.PIPELINE)(**parts)
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
    denoiser_device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a base model; family and prediction_type override detection. ``denoiser_device`` (default
    ``device``) keeps the UNet/transformer elsewhere, for a base stored smaller or swapped afterwards."""
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
    if (fam in FLOW_FAMILIES) != (pred == "flow"):
        if prediction_type:
            raise ModelLoadError(
                f"model settings: prediction_type {pred} does not fit a {fam} model; SD3 and FLUX are trained "
                "with flow matching and the UNet families with epsilon or v_prediction, so set "
                "model.prediction_type = \"auto\"")
        pred = "flow" if fam in FLOW_FAMILIES else "epsilon"

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
    denoiser = pipe.transformer if fam in FLOW_FAMILIES else pipe.unet
    denoiser.to(denoiser_device if denoiser_device is not None else device)
    for module in [pipe.vae, *text_encoders]:
        module.to(device)
    sample_scheduler = pipe.scheduler
    if pred != "flow" and sample_scheduler.config.get("prediction_type") != pred:
        sample_scheduler = type(sample_scheduler).from_config(sample_scheduler.config, prediction_type=pred)
    # Frozen unless the trainer says otherwise: a base model is never trained
    # whole, and eval mode turns off the text encoders' dropout.
    for module in [denoiser, pipe.vae, *text_encoders]:
        module.requires_grad_(False)
        module.eval()
    if kind == "builtin":
        resolution = builtin.BUILTIN_RESOLUTION
    else:
        resolution = native_resolution(fam, pred, dict(denoiser.config))
    return LoadedModel(
        spec=spec,
        source_kind=info.source_kind,
        family=fam,
        prediction_type=pred,
        unet=denoiser,
        vae=pipe.vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        noise_scheduler=make_noise_scheduler(pipe.scheduler.config, pred),
        fingerprint=_fingerprint(kind, where, config_source),
        resolution=resolution,
        vae_scaling_factor=float(pipe.vae.config.get("scaling_factor", 0.18215)),
        vae_shift_factor=float(pipe.vae.config.get("shift_factor") or 0.0),
        sample_scheduler=sample_scheduler,
        # The pipeline's own flags (e.g. SDXL's force_zeros_for_empty_prompt),
        # not its component entries, for make_pipeline to pass on.
        pipeline_config={k: v for k, v in pipe.config.items() if isinstance(v, (bool, int, float)) and k[0] != "_"},
    )


def _text_components(pipe: Any, family: str, spec: str) -> tuple[list[Any], list[Any]]:
    if family in FLOW_FAMILIES:
        from loratui.models.text import family_module

        names = list(family_module(family).TEXT_SUFFIXES)
        denoiser = getattr(pipe, "transformer", None)
    else:
        names = ["", "_2"] if family == "sdxl" else [""]
        denoiser = pipe.unet
    encoders = [getattr(pipe, f"text_encoder{n}", None) for n in names]
    tokenizers = [getattr(pipe, f"tokenizer{n}", None) for n in names]
    if family in FLOW_FAMILIES and (encoders[-1] is None or tokenizers[-1] is None):
        from loratui.models.text import family_module

        kind = getattr(family_module(family), "TEXT_ENCODER_NAME", "T5")
        raise ModelLoadError(
            f"{spec} has no {kind} text encoder (text_encoder{names[-1]}/tokenizer{names[-1]}); {family} models "
            f"condition on {kind}, so loratui needs it: use a complete diffusers folder, or for one file set "
            "model.config_source to a diffusers folder or hub id of the same model that has it")
    if any(m is None for m in encoders + tokenizers) or denoiser is None or pipe.vae is None:
        what = "transformer" if family in FLOW_FAMILIES else "UNet"
        raise ModelLoadError(f"{spec} is missing a {what}, VAE, text encoder or tokenizer; loratui needs all of them")
    return encoders, tokenizers


def make_noise_scheduler(scheduler_config: Any, prediction_type: str) -> Any:
    """A DDPM scheduler over the model's betas, for adding noise in training.

    Flow-matching models keep their own flow scheduler, whose config (shift) the objective reads.
    """
    import inspect

    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if prediction_type == "flow":
        return FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))

    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(scheduler_config).items() if k in accepted}
    config["prediction_type"] = prediction_type
    # Only DDPM's step() clips; training never calls it, sampling elsewhere.
    config["clip_sample"] = False
    return DDPMScheduler(**config)


def _pipeline_class(family: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family in FLOW_FAMILIES:
        import diffusers

        from loratui.models.text import family_module

        return getattr(diffusers, family_module(family).PIPELINE)
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _load_pipeline(kind: str, where: Path | str, family: str, config_source: str | None, dtype: torch.dtype) -> Any:
    cls = _pipeline_class(family)
    # Image encoders and feature extractors serve IP-adapters and the safety
    # checker; training never uses them, so they are not loaded.
    extra: dict[str, Any] = {k: None for k in ("feature_extractor", "image_encoder") if k in _init_names(cls)}
    if family not in ("sdxl", *FLOW_FAMILIES):
        extra.update(safety_checker=None, requires_safety_checker=False)
    extra.update(_dtype_kwarg(dtype))
    try:
        with builtin.quiet_progress():
            if kind in ("builtin", "folder"):
                _check_folder_components(Path(where), cls, family)
                _check_folder_weights(Path(where))
                return cls.from_pretrained(str(where), local_files_only=True, **extra)
            if kind == "hub":
                return cls.from_pretrained(str(where), **extra)
            if family in FLOW_FAMILIES:
                return _flow_single_file(Path(where), family, config_source, cls, extra, dtype)
            single: dict[str, Any] = {}
            if config_source:
                cfg = Path(config_source).expanduser()
                single = {"config": str(cfg), "local_files_only": True} if cfg.is_dir() else {"config": config_source}
            return cls.from_single_file(str(where), **single, **extra)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types for bad input
        raise ModelLoadError(_explain_failure(kind, where, config_source, exc)) from exc


def _family_module(family: str) -> Any:
    from loratui.models.text import family_module

    return family_module(family)


def _init_names(cls: Any) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def _flow_single_file(path: Path, family: str, config_source: str | None, cls: Any, extra: dict[str, Any],
                      dtype: torch.dtype) -> Any:
    """An SD3 or FLUX transformer file with the rest of the pipeline (and its configs) from config_source.

    FLUX and SD3.5 checkpoints are published as the transformer alone, without text encoders or VAE.
    A FLUX file is converted here from Black Forest Labs' layout with the widths its config names
    (diffusers' own converter assumes FLUX.1's); an SD3 file goes through diffusers' converter.
    """
    from loratui.models.family import single_file_advice

    if not config_source:
        blocks = None
        if family == "sd3":
            import re

            found = {m.group(1) for k in read_safetensors_header(path) if (m := re.search(r"joint_blocks\.(\d+)\.", k))}
            blocks = len(found)
        raise ModelLoadError(single_file_advice(path, family, blocks))
    folder = Path(config_source).expanduser()
    local: dict[str, Any] = {"local_files_only": True} if folder.is_dir() else {}
    source = str(folder) if folder.is_dir() else config_source
    from loratui.models.text import family_module

    fam = family_module(family)
    if hasattr(fam, "from_original"):
        import diffusers
        from safetensors.torch import load_file

        model_cls = getattr(diffusers, fam.TRANSFORMER_CLASS)
        config = model_cls.load_config(source, subfolder="transformer", **local)
        if config.get("_class_name") not in (None, model_cls.__name__):
            raise ModelLoadError(
                f"{path} is a {family} transformer but model.config_source {config_source} holds a "
                f"{config.get('_class_name')}; set model.config_source to a diffusers folder or hub id of a "
                f"{family} model")
        with torch.device("meta"):
            transformer = model_cls.from_config(config)
        try:
            transformer.load_state_dict(fam.from_original(load_file(str(path)), config), strict=True, assign=True)
            if hasattr(fam, "finish_meta_model"):
                fam.finish_meta_model(transformer)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(
                f"{path} does not fit the {family} transformer config of {config_source} "
                f"({str(exc).splitlines()[0]}); "
                "set model.config_source to the diffusers folder or hub id of the model this file was made "
                "from (FLUX.1-dev and FLUX.1-schnell differ in their guidance embedding)") from None
        transformer.to(dtype)
    elif hasattr(_family_module(family), "load_single_file"):
        # Families whose files diffusers has no converter for (Qwen-Image's keeps diffusers' names).
        try:
            transformer = _family_module(family).load_single_file(path, source, local).to(dtype)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(
                f"{path} does not fit the {FAMILY_NAMES[family]} transformer config of {config_source} "
                f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); set "
                "model.config_source to the diffusers folder or hub id of the model this file was made from") from None
    else:
        import diffusers

        from loratui.models.text import family_module

        # diffusers' own converters read SD3's MMDiT layout and Z-Image's original (fused qkv) layout.
        transformer_class = getattr(diffusers, getattr(family_module(family), "TRANSFORMER", "SD3Transformer2DModel"))
        try:
            transformer = transformer_class.from_single_file(str(path), config=source, subfolder="transformer",
                                                             **_dtype_kwarg(dtype), **local)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(
                f"{path} does not fit the {family} transformer config of {config_source} "
                f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); set "
                "model.config_source to the diffusers folder or hub id of the model this file was made from, "
                "or model.family to the family the file belongs to") from None
    return cls.from_pretrained(source, transformer=transformer, **extra, **local)


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


def _check_folder_components(folder: Path, cls: Any, family: str) -> None:
    """Name a part the pipeline needs that the folder lacks (diffusers would only list its expectations)."""
    import inspect
    import json

    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the probe has already said what is wrong with it
    # The safety checker and the image parts are passed as None (see _load_pipeline); the rest must be there.
    optional = ("self", "safety_checker", "feature_extractor", "image_encoder")
    needed = [name for name, p in inspect.signature(cls.__init__).parameters.items()
              if name not in optional and p.default is inspect.Parameter.empty]
    for name in needed:
        entry = index.get(name)
        if entry is None or (isinstance(entry, list) and None in entry) or not (folder / name).is_dir():
            what = name
            if name.startswith(("text_encoder", "tokenizer")) and family in FLOW_FAMILIES:
                from loratui.models.text import family_module

                fam = family_module(family)
                if name.startswith("text_encoder") and len(fam.TEXT_SUFFIXES) == 1:
                    what = f"{name} (the {getattr(fam, 'TEXT_ENCODER_NAME', 'T5')} text encoder)"
            raise ModelLoadError(
                f"{folder} has no {what}, which a {family} model needs (model_index.json or the {name}/ folder); "
                "copy or download the whole diffusers folder, or point model.base at one that has it")


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
