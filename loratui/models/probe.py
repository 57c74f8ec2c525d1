"""Find out what a base-model spec is, cheaply, and reject bad ones early.

``probe_model`` reads only configs and file headers (never weights), so the
wizard can show the family while the user types; ``load_model`` starts with
the same checks. Every user mistake ends in a ``ModelLoadError`` whose
message names the path and what to do.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.errors import UserError
from loratui.models import builtin
from loratui.models.family import (
    FAMILY_NAMES,
    FamilyError,
    family_from_configs,
    family_from_keys,
    family_from_transformer_config,
    has_v_pred_marker,
    native_resolution,
    prediction_from_keys,
    prediction_from_scheduler_config,
)

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# safetensors refuses headers above 100 MB; a bigger length means garbage.
_MAX_HEADER = 100 * 1024 * 1024


class ModelLoadError(UserError):
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
    # Native pixel size, a sensible default for the training resolution.
    resolution: int | None = None


# --- resolving a spec -----------------------------------------------------


def resolve_spec(spec: str) -> tuple[str, Path | str]:
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


def read_json(path: Path) -> dict[str, Any]:
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
    if not unet_cfg and "transformer" in index:
        return _transformer_info(spec, kind, label, read, path)
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
    return ModelInfo(spec, kind, family, pred, _describe(family, pred, res, label), path, res)


def _transformer_info(
    spec: str, kind: str, label: str, read: Callable[[str], dict[str, Any]], path: Path | None
) -> ModelInfo:
    """ModelInfo of an SD3 or FLUX folder: the family from transformer/config.json."""
    config = read("transformer/config.json")
    try:
        family = family_from_transformer_config(config)
    except FamilyError as exc:
        raise ModelLoadError(f"{label}: {exc}") from None
    res = native_resolution(family, "flow", config)
    kind_text = ""
    if family == "flux":
        kind_text = "guidance-distilled, like FLUX.1-dev" if config.get("guidance_embeds") else \
            "no guidance embedding, like FLUX.1-schnell"
    elif family == "qwen_image":
        pipeline = str(read("model_index.json").get("_class_name", ""))
        if "Edit" in pipeline or "Layered" in pipeline:
            raise ModelLoadError(
                f"{label} is a {pipeline} (Qwen-Image-Edit: conditioned on a reference image), which loratui "
                "does not train; use a Qwen-Image text-to-image model (QwenImagePipeline), e.g. Qwen/Qwen-Image")
        kind_text = f"MMDiT, {config.get('num_layers', '?')} blocks, Qwen2.5-VL text encoder"
    elif family == "zimage":
        kind_text = f"single-stream DiT, {config.get('n_layers', '?')} layers, Qwen3 text encoder"
    if family == "chroma":
        kind_text = "FLUX blocks with an approximator, T5 only"
    if family == "flux2_klein" and read("model_index.json").get("_class_name") == "Flux2Pipeline":
        from loratui.models.family import FLUX2_DEV_MESSAGE

        raise ModelLoadError(f"{label}: {FLUX2_DEV_MESSAGE}")
    if family == "flux2_klein":
        kind_text = "Qwen3 text encoder, " + ("guidance-distilled" if config.get("guidance_embeds") else
                                              "no guidance embedding, like the klein base models")
        if read("model_index.json").get("is_distilled"):
            # Black Forest Labs publish the -base- models for fine-tuning; the distilled ones sample in 4 steps.
            kind_text += "; step-distilled: LoRAs are usually trained on FLUX.2-klein-base-4B/-9B"
    where = f"{label}; {kind_text}" if kind_text else label
    return ModelInfo(spec, kind, family, "flow", _describe(family, "flow", res, where), path, res)


def folder_info(spec: str, kind: str, folder: Path) -> ModelInfo:
    return _configs_info(spec, kind, f"diffusers folder {folder}", lambda name: read_json(folder / name), folder)


def _describe(family: str, pred: str, resolution: int, where: str) -> str:
    pred_text = {"v_prediction": "v-prediction", "flow": "flow matching"}.get(pred, "epsilon")
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
    import torch

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
    cfg_dir = _config_folder(config_source)
    try:
        family = family_from_keys(keys, keys)
        pred = prediction_from_keys(keys, family)
        unet_cfg = read_json(cfg_dir / "unet" / "config.json") if cfg_dir else {}
        if has_v_pred_marker(keys) or pred == "flow":
            pass  # the file's own marker beats any config; flow models have no prediction_type
        elif cfg_dir and (sched := read_json(cfg_dir / "scheduler" / "scheduler_config.json")):
            pred = prediction_from_scheduler_config(sched)
        elif family == "sd2" and extras.get("global_step") == 875000:
            # The one SD2 checkpoint trained for epsilon (512-base) is known
            # by its step count, as diffusers also does.
            pred = "epsilon"
    except FamilyError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    res = native_resolution(family, pred, unet_cfg)
    desc = _describe(family, pred, res, f"single file {path.name}")
    return ModelInfo(spec, "single_file", family, pred, desc, path, res)


def _config_folder(config_source: str | None) -> Path | None:
    """The local diffusers folder named by model.config_source, if it is one.

    A hub id is left to diffusers; a path that is not a diffusers folder is
    refused here rather than sent to the hub as an id.
    """
    if not config_source:
        return None
    path = Path(config_source).expanduser()
    if (path / "model_index.json").is_file():
        return path
    if path.exists() or config_source.startswith(("/", ".", "~")) or not _HUB_ID.match(config_source):
        raise ModelLoadError(
            f"model.config_source {config_source!r} is not a diffusers folder (no model_index.json there); "
            "point it at a folder of the same family that has model_index.json, or at a hub id"
        )
    return None


def _hub_info(spec: str, repo_id: str) -> ModelInfo:
    from huggingface_hub import hf_hub_download

    def fetch(name: str) -> dict[str, Any]:
        last: Exception | None = None
        # The local hub cache first, so probing a downloaded model is offline.
        for local_only in (True, False):
            try:
                return read_json(Path(hf_hub_download(repo_id, name, local_files_only=local_only)))
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
    kind, where = resolve_spec(spec)
    if kind == "builtin":
        name = str(where)
        family, pred = builtin.BUILTIN_FAMILIES[name]
        desc = f"built-in: {builtin.BUILTIN_MODELS[name]}"
        return ModelInfo(spec, "builtin", family, pred, desc, None, builtin.BUILTIN_RESOLUTION)
    if kind == "folder":
        return folder_info(spec, kind, Path(where))
    if kind == "single_file":
        return _single_file_info(spec, Path(where), config_source, allow_pickle)
    return _hub_info(spec, str(where))
