"""A Z-Image transformer as one file in its original layout (the keys ComfyUI's published files have).

The original (Lumina-style NextDiT) layout fuses each block's q, k and v into one
``attention.qkv`` weight and names the output ``attention.out`` and the qk norms
``q_norm``/``k_norm``; the patch embedder and final layer have no patch-size key.
diffusers' ``ZImageTransformer2DModel.from_single_file`` reads it back (its
``convert_z_image_transformer_checkpoint_to_diffusers``), so a merged model saved
this way loads in ComfyUI and in loratui alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_RENAMES = (
    ("all_final_layer.2-1.", "final_layer."),
    ("all_x_embedder.2-1.", "x_embedder."),
    (".attention.to_out.0.", ".attention.out."),
    (".attention.norm_q.", ".attention.q_norm."),
    (".attention.norm_k.", ".attention.k_norm."),
)
_QKV = re.compile(r"(.+\.attention\.)to_([qkv])\.weight$")


def zimage_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ZImageTransformer2DModel keys -> the original single-file keys (q, k, v fused)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _QKV.fullmatch(key)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2)] = tensor
            continue
        for old, new in _RENAMES:
            key = key.replace(old, new)
        out[key] = tensor
    for prefix, qkv in parts.items():
        out[f"{prefix}qkv.weight"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out
