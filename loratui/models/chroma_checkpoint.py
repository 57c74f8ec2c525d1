"""A Chroma transformer as one file in its original layout (``Chroma1-HD.safetensors``'s keys).

That is the file ComfyUI ("Load Diffusion Model") reads. The blocks are laid
out as FLUX's are in Black Forest Labs' checkpoints (fused ``qkv`` /
``linear1``; see ``loratui.models.flux_checkpoint``), without their
modulation layers; the approximator keeps its own names, with ``in_layer`` /
``out_layer`` for diffusers' ``linear_1`` / ``linear_2`` and ``scale`` for its
RMS norms' ``weight``. The final norm has no weights in Chroma.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from loratui.models.flux_checkpoint import bfl_to_flux, flux_to_bfl

_TOP = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
        "distilled_guidance_layer.in_proj": "distilled_guidance_layer.in_proj",
        "distilled_guidance_layer.out_proj": "distilled_guidance_layer.out_proj"}
_APPROXIMATOR = re.compile(r"distilled_guidance_layer\."
                           r"(layers\.\d+\.(?:linear_1|linear_2|in_layer|out_layer)|norms\.\d+)\.(weight|bias|scale)")
_TO_ORIGINAL = {"linear_1": "in_layer", "linear_2": "out_layer", "weight": "scale"}
_FROM_ORIGINAL = {v: k for k, v in _TO_ORIGINAL.items()}


def _approximator_key(key: str, table: Mapping[str, str]) -> str | None:
    m = _APPROXIMATOR.fullmatch(key)
    if m is None:
        return None
    module, kind = m.group(1), m.group(2)
    if module.startswith("norms."):
        return f"distilled_guidance_layer.{module}.{table.get(kind, kind)}"
    prefix, _, layer = module.rpartition(".")
    return f"distilled_guidance_layer.{prefix}.{table.get(layer, layer)}.{kind}"


def chroma_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ChromaTransformer2DModel state dict -> Chroma checkpoint keys; every tensor placed or an error."""
    out: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        renamed = _approximator_key(key, _TO_ORIGINAL)
        if renamed is not None:
            out[renamed] = tensor
        else:
            rest[key] = tensor
    out.update(flux_to_bfl(rest, top=_TOP))
    return out


def original_to_chroma(state: Mapping[str, torch.Tensor], config: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`chroma_to_original` for a model of this config (any width, not only Chroma1's 3072).
    ComfyUI's ``model.diffusion_model.`` prefix is accepted."""
    out: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        key = key.removeprefix("model.diffusion_model.")
        renamed = _approximator_key(key, _FROM_ORIGINAL)
        if renamed is not None:
            out[renamed] = tensor
        else:
            rest[key] = tensor
    out.update(bfl_to_flux(rest, config, top=_TOP))
    return out
