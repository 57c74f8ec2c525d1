"""Load a base model from a built-in name, a folder, one file or a hub id.

``probe_model`` answers "what is this?" cheaply (configs and file headers
only) so the wizard can show the family while the user types;
``load_model`` loads the weights through diffusers. Every user mistake ends
in a ``ModelLoadError`` whose message names the path and what to do.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loratui.models import builtin
from loratui.models.family import (
    FAMILY_NAMES,
    FamilyError,
    check_family,
    check_prediction_type,
    family_from_configs,
    family_from_keys,
    native_resolution,
    prediction_from_keys,
    prediction_from_scheduler_config,
)

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# safetensors refuses headers above 100 MB; a bigger length means garbage.
_MAX_HEADER = 100 * 1024 * 1024

_BUILTIN_FAMILY = {"tiny-sd": ("sd1", "epsilon"), "tiny-sd2": ("sd2", "v_prediction"), "tiny-sdxl": ("sdxl", "epsilon")}


class ModelLoadError(Exception):
    """A base model cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """What probe_model found out without loading weights."""

    spec: str
    source_kind: str  # "builtin" | "folder" | "single_file" | "hub"
    family: str  # "sd1" | "sd2" | "sdxl"
    prediction_type: str  # "epsilon" | "v_prediction"
    description: str
    path: Path | None = None


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


# --- resolving a spec -----------------------------------------------------


def _resolve(spec: str) -> tuple[str, Path | str]:
    """(source_kind, location) for a spec; raises ModelLoadError for bad ones."""
    text = spec.strip()
    if not text:
        raise ModelLoadError("no base model given; set model.base to builtin:tiny-sd, a hub id, a folder or a file")
    if text.startswith(builtin.BUILTIN_PREFIX):
        name = text[len(builtin.BUILTIN_PREFIX) :]
        if name not in builtin.BUILTIN_MODELS:
            known = ", ".join(builtin.BUILTIN_PREFIX + n for n in builtin.BUILTIN_MODELS)
            raise ModelLoadError(f"unknown built-in model {text!r}; choose one of {known}")
        return "builtin", name
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{path} is not a diffusers model folder (it has no model_index.json); "
                "point at the folder that contains model_index.json, or at a .safetensors checkpoint file"
            )
        return "folder", path
    if path.is_file():
        return "single_file", path
    looks_like_path = text.startswith(("/", ".", "~")) or text.lower().endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES)
    if not looks_like_path and _HUB_ID.match(text):
        return "hub", text
    raise ModelLoadError(
        f"{path} does not exist; check the path (or, for a Hugging Face model, give its id as org/name)"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}; the model folder is damaged, copy it again") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object; the model folder is damaged, copy it again")
    return data


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file size.

    A download cut short keeps a valid header but loses tensor bytes, which
    otherwise only shows up deep inside a load; the size check catches it here.
    """
    again = "download or copy it again"
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw_len = fh.read(8)
            header_len = struct.unpack("<Q", raw_len)[0] if len(raw_len) == 8 else -1
            if not 0 <= header_len <= min(_MAX_HEADER, size - 8):
                raise ModelLoadError(f"{path} is truncated or not a safetensors file ({size} bytes); {again}")
            header = json.loads(fh.read(header_len))
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        # JSON errors are ValueErrors; the rest mean a header of the wrong shape.
        raise ModelLoadError(f"{path} has a damaged safetensors header; {again}") from None
    if 8 + header_len + end > size:
        raise ModelLoadError(
            f"{path} is truncated: its header describes {8 + header_len + end} bytes but the file has {size}; "
            f"the download or copy was cut short, {again}"
        )
    return header


# --- probing --------------------------------------------------------------


def _configs_info(
    spec: str, kind: str, label: str, read: Callable[[str], dict[str, Any]], path: Path | None
) -> ModelInfo:
    """ModelInfo from a diffusers layout's JSON files, whatever reads them."""
    index, unet_cfg = read("model_index.json"), read("unet/config.json")
    if not unet_cfg:
        raise ModelLoadError(
            f"{label} has no unet/config.json; only whole Stable Diffusion pipelines "
            "(UNet, VAE, text encoder) can be trained"
        )
    try:
        family = family_from_configs(index, unet_cfg, read("text_encoder/config.json"))
        pred = prediction_from_scheduler_config(read("scheduler/scheduler_config.json"))
    except FamilyError as exc:
        raise ModelLoadError(f"{label}: {exc}") from None
    res = native_resolution(family, pred, unet_cfg)
    return ModelInfo(spec, kind, family, pred, _describe(family, pred, res, label), path)


def _folder_info(spec: str, kind: str, folder: Path) -> ModelInfo:
    return _configs_info(spec, kind, f"diffusers folder {folder}", lambda name: _read_json(folder / name), folder)


def _describe(family: str, pred: str, resolution: int, where: str) -> str:
    pred_text = "v-prediction" if pred == "v_prediction" else "epsilon"
    return f"{FAMILY_NAMES[family]}, {pred_text}, {resolution} px ({where})"


def _checkpoint_keys(path: Path, allow_pickle: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensor name -> shape of a single-file checkpoint, and non-tensor extras."""
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        header = read_safetensors_header(path)
        return {k: v.get("shape") for k, v in header.items() if k != "__metadata__"}, {}
    if suffix not in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path} is neither a .safetensors checkpoint nor a diffusers folder; "
            "point at a .safetensors file or a folder with model_index.json"
        )
    if not allow_pickle:
        raise ModelLoadError(
            f"{path} is a pickle checkpoint ({suffix}); loading one can run arbitrary code hidden in the file. "
            "Convert it to .safetensors, or if you trust its source set model.allow_pickle = true in loratui.toml"
        )
    try:
        # mmap reads the index, not the weights; weights_only refuses code.
        data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file here
        raise ModelLoadError(
            f"cannot read {path} as a plain-tensor checkpoint ({type(exc).__name__}: {exc}); convert it to .safetensors"
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a state dict; it is not a Stable Diffusion checkpoint")
    extras = {k: v for k, v in data.items() if not isinstance(v, (dict, torch.Tensor))}
    state = data.get("state_dict", data)
    if not isinstance(state, dict):
        return {}, extras
    return {str(k): list(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}, extras


def _single_file_info(spec: str, path: Path, config_source: str | None, allow_pickle: bool) -> ModelInfo:
    keys, extras = _checkpoint_keys(path, allow_pickle)
    try:
        family = family_from_keys(keys, keys)
    except FamilyError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    pred = prediction_from_keys(keys, family)
    has_marker = pred == "v_prediction" and family != "sd2"
    unet_cfg: dict[str, Any] = {}
    if config_source and Path(config_source).expanduser().is_dir():
        cfg_dir = Path(config_source).expanduser()
        unet_cfg = _read_json(cfg_dir / "unet" / "config.json")
        if not has_marker:
            sched = _read_json(cfg_dir / "scheduler" / "scheduler_config.json")
            if sched:
                pred = prediction_from_scheduler_config(sched)
    elif family == "sd2" and extras.get("global_step") == 875000:
        # The one SD2 checkpoint trained for epsilon (512-base) is known by
        # its step count, as diffusers also does.
        pred = "epsilon"
    res = native_resolution(family, pred, unet_cfg)
    return ModelInfo(spec, "single_file", family, pred, _describe(family, pred, res, f"single file {path.name}"), path)


def _hub_info(spec: str, repo_id: str) -> ModelInfo:
    from huggingface_hub import hf_hub_download

    def fetch(name: str) -> dict[str, Any]:
        last: Exception | None = None
        # The local hub cache first, so probing a downloaded model is offline.
        for local_only in (True, False):
            try:
                return _read_json(Path(hf_hub_download(repo_id, name, local_files_only=local_only)))
            except Exception as exc:  # noqa: BLE001 - hub errors vary by version
                last = exc
        if name == "model_index.json":
            raise ModelLoadError(
                f"{repo_id!r} is not a local path and its model_index.json could not be fetched from the "
                f"Hugging Face hub ({type(last).__name__}); check the id, your network, or log in for gated models"
            ) from None
        return {}

    return _configs_info(spec, "hub", f"hub model {repo_id}", fetch, None)


def probe_model(spec: str, *, config_source: str | None = None, allow_pickle: bool = False) -> ModelInfo:
    """Family, prediction type and a description, without loading weights."""
    kind, where = _resolve(spec)
    if kind == "builtin":
        name = str(where)
        family, pred = _BUILTIN_FAMILY[name]
        return ModelInfo(spec, "builtin", family, pred, f"built-in: {builtin.BUILTIN_MODELS[name]}")
    if kind == "folder":
        return _folder_info(spec, kind, Path(where))
    if kind == "single_file":
        return _single_file_info(spec, Path(where), config_source, allow_pickle)
    return _hub_info(spec, str(where))


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
    kind, where = _resolve(spec)
    if kind == "builtin":
        # Built-ins load from their cache folder exactly like a user's folder.
        try:
            where = builtin.ensure_builtin(str(where))
        except OSError as exc:
            raise ModelLoadError(
                f"cannot write the built-in model to {builtin.cache_root()}: {exc.strerror or exc}; "
                "free some space or set LORATUI_CACHE_DIR to a writable folder"
            ) from None
        info = _folder_info(spec, "builtin", Path(where))
    else:
        info = probe_model(spec, config_source=config_source, allow_pickle=allow_pickle)
    try:
        fam = check_family(family) if family else info.family
        pred = check_prediction_type(prediction_type) if prediction_type else info.prediction_type
    except FamilyError as exc:
        raise ModelLoadError(f"model settings: {exc}") from None

    pipe = _load_pipeline(kind, where, fam, config_source, dtype)
    pipe.to(device)
    sample_scheduler = pipe.scheduler
    if sample_scheduler.config.get("prediction_type") != pred:
        sample_scheduler = type(sample_scheduler).from_config(sample_scheduler.config, prediction_type=pred)

    if fam == "sdxl":
        text_encoders = [pipe.text_encoder, pipe.text_encoder_2]
        tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
    else:
        text_encoders, tokenizers = [pipe.text_encoder], [pipe.tokenizer]
    if any(m is None for m in text_encoders + tokenizers) or pipe.unet is None or pipe.vae is None:
        raise ModelLoadError(f"{spec} is missing a UNet, VAE, text encoder or tokenizer; loratui needs all of them")
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
