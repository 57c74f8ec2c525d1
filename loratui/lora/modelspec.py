"""Stability AI's ModelSpec (``modelspec.*`` metadata): the names, the hash and the rules.

SwarmUI reads these keys to sort a LoRA under its base model, show its title,
thumbnail and trigger phrase and check its hash; the architecture IDs follow
the ModelSpec README's listing, and where it is silent the names sd-scripts
and musubi-tuner write (which SwarmUI also knows, compared in lower case).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPEC_VERSION = "1.0.1"
ADAPTER = "lora"

# One entry per model family (model.family): the base model's architecture ID.
# A LoRA's own ID is this plus "/lora". Plain dicts, so a new family adds one line.
ARCHITECTURES: dict[str, str] = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sdxl": "stable-diffusion-xl-v1-base",
    "sd3": "stable-diffusion-v3-medium",
    "flux": "flux-1-dev",
    # sd-scripts' Chroma name; musubi-tuner's Z-Image, Qwen-Image and FLUX.2 klein names.
    "chroma": "chroma",
    "zimage": "Z-Image",
    "qwen_image": "Qwen-Image",
    "flux2_klein": "Flux.2-klein-4b",
}
# Variants a family's own config tells apart: (family, variant) -> architecture ID.
VARIANT_ARCHITECTURES: dict[tuple[str, str], str] = {
    ("sd2", "v"): "stable-diffusion-v2-768-v",
    ("sd3", "3-medium"): "stable-diffusion-v3-medium",
    ("sd3", "3.5-medium"): "stable-diffusion-v3.5-medium",
    ("sd3", "3.5-large"): "stable-diffusion-v3.5-large",
    ("flux", "dev"): "flux-1-dev",
    ("flux", "schnell"): "flux-1-schnell",
    ("flux2_klein", "4b"): "Flux.2-klein-4b",
    ("flux2_klein", "9b"): "Flux.2-klein-9b",
}
# The codebase whose names the file's keys follow, as sd-scripts and musubi-tuner write it.
IMPLEMENTATIONS: dict[str, str] = {
    "sd1": "diffusers",
    "sd2": "diffusers",
    "sdxl": "https://github.com/Stability-AI/generative-models",
    "sd3": "https://github.com/Stability-AI/sd3.5",
    "flux": "https://github.com/black-forest-labs/flux",
    "chroma": "https://huggingface.co/lodestones/Chroma",
    "zimage": "https://github.com/Tongyi-MAI/Z-Image",
    "qwen_image": "https://github.com/QwenLM/Qwen-Image",
    "flux2_klein": "https://github.com/black-forest-labs/flux2",
}

# The spec's MUST keys, and resolution, which it requires of image generators.
REQUIRED_KEYS = ("sai_model_spec", "architecture", "implementation", "title", "resolution")
# Every key the spec defines (general and image-generation ones); others are not modelspec's.
KNOWN_KEYS = frozenset({
    *REQUIRED_KEYS, "description", "author", "date", "hash_sha256", "implementation_version", "license",
    "usage_hint", "thumbnail", "tags", "merged_from", "trigger_phrase", "prediction_type", "timestep_range",
    "encoder_layer", "preprocessor", "is_negative_embedding", "unet_dtype", "vae_dtype",
})  # fmt: skip
THUMBNAIL_SIZE = 256  # the spec's recommended side


def model_variant(family: str, config: Mapping[str, Any] | None) -> str | None:
    """Which published model of a family a denoiser config describes; None when it is none of them."""
    config = config or {}
    if family == "sd3":
        layers = config.get("num_layers")
        if layers == 38:
            return "3.5-large"
        if layers == 24:
            return "3.5-medium" if config.get("dual_attention_layers") else "3-medium"
    elif family == "flux":
        if "guidance_embeds" in config:
            return "dev" if config["guidance_embeds"] else "schnell"
    elif family == "flux2_klein":
        return {5: "4b", 8: "9b"}.get(config.get("num_layers"))  # type: ignore[arg-type]
    return None


def architecture(family: str, prediction_type: str = "epsilon", variant: str | None = None) -> str:
    """The LoRA's ``modelspec.architecture``: the base model's ID and ``/lora``."""
    if family == "sd2" and prediction_type == "v_prediction":
        variant = "v"
    # A family without an entry still gets its file written (the name is then only loratui's own);
    # tests require an entry for every family, so this is a fallback, never the plan.
    base = VARIANT_ARCHITECTURES.get((family, variant or ""), ARCHITECTURES.get(family, family))
    return f"{base}/{ADAPTER}"


def implementation(family: str) -> str:
    return IMPLEMENTATIONS.get(family, "diffusers")


def prediction_type(value: str) -> str:
    """The spec's spelling: ``v`` or ``epsilon``; flow-matching models predict ``flow``."""
    return {"v_prediction": "v", "flow": "flow"}.get(value, "epsilon")


def tensor_hash(data: bytes) -> str:
    """``modelspec.hash_sha256``: SHA-256 of everything after the safetensors header, ``0x`` + lower hex.

    The same bytes as kohya's ``sshs_model_hash`` (which has no ``0x``), so metadata never changes it.
    """
    header_len = int.from_bytes(data[:8], "little")
    return "0x" + hashlib.sha256(data[8 + header_len :]).hexdigest()


def thumbnail_data_url(image: Path, size: int = THUMBNAIL_SIZE) -> str:
    """A small JPEG of ``image`` as a ``data:image/jpeg;base64,`` URL, its longer side ``size``."""
    from PIL import Image

    with Image.open(image) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")
_RESOLUTION = re.compile(r"^\d+x\d+$")
_HASH = re.compile(r"^0x[0-9a-f]{64}$")


def problems(metadata: Mapping[str, str], data: bytes | None = None) -> list[str]:
    """Where ``metadata`` breaks ModelSpec's rules (empty when it keeps them).

    ``data``, the file's bytes, lets the hash be recomputed and compared.
    """
    spec = {k.removeprefix("modelspec."): v for k, v in metadata.items() if k.startswith("modelspec.")}
    found = [f"modelspec.{key} is missing" for key in REQUIRED_KEYS if not spec.get(key)]
    found += [f"modelspec.{key} is not a ModelSpec key" for key in spec if key not in KNOWN_KEYS]
    if spec.get("sai_model_spec") not in (None, "1.0.0", SPEC_VERSION):
        found.append(f"modelspec.sai_model_spec {spec['sai_model_spec']!r} is not a published version")
    arch = spec.get("architecture", "")
    known = {f"{a}/{ADAPTER}".lower() for a in (*ARCHITECTURES.values(), *VARIANT_ARCHITECTURES.values())}
    if arch and arch.lower() not in known:
        found.append(f"modelspec.architecture {arch!r} is not a known LoRA architecture")
    if spec.get("resolution") and not _RESOLUTION.match(spec["resolution"]):
        found.append(f"modelspec.resolution {spec['resolution']!r} is not WIDTHxHEIGHT")
    if spec.get("date") and not _DATE.match(spec["date"]):
        found.append(f"modelspec.date {spec['date']!r} is not ISO-8601")
    if "hash_sha256" in spec:
        if not _HASH.match(spec["hash_sha256"]):
            found.append("modelspec.hash_sha256 is not 0x and 64 lower-case hex digits")
        elif data is not None and spec["hash_sha256"] != tensor_hash(data):
            found.append("modelspec.hash_sha256 differs from the file's tensor bytes")
    if spec.get("thumbnail") and not spec["thumbnail"].startswith("data:image/"):
        found.append("modelspec.thumbnail is not a data:image/ URL")
    if spec.get("prediction_type") not in (None, "epsilon", "v", "flow"):
        found.append(f"modelspec.prediction_type {spec['prediction_type']!r} is not epsilon, v or flow")
    return found
