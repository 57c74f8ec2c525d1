"""A FLUX transformer as one file in Black Forest Labs' layout (``flux1-dev.safetensors``'s keys).

That is the file ComfyUI ("Load Diffusion Model"), Forge and diffusers'
``FluxTransformer2DModel.from_single_file`` read. diffusers keeps q, k, v
(and the single blocks' MLP input) as separate layers and orders the final
norm's modulation (scale, shift); BFL fuses the first and orders the second
(shift, scale). The block layers' names come from the same table the LoRA
files use (``loratui.lora.transformer_names``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from loratui.lora.transformer_names import flux_bfl_module, flux_diffusers_parts
from loratui.models.checkpoint_names import fuse_rows, place_renamed

_TOP = {
    "norm_out.linear": "final_layer.adaLN_modulation.1",  # (scale, shift) here, (shift, scale) there
    "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}  # fmt: skip
_NORMS = {
    "transformer_blocks": {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                           "attn.norm_added_q": "txt_attn.norm.query_norm",
                           "attn.norm_added_k": "txt_attn.norm.key_norm"},
    "single_transformer_blocks": {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"},
}


def flux_to_bfl(state: Mapping[str, torch.Tensor], top: Mapping[str, str] = _TOP,
                family: str = "flux") -> dict[str, torch.Tensor]:
    """diffusers FluxTransformer2DModel state dict -> BFL checkpoint keys; every tensor is placed or an error.

    ``top``: the layers outside the blocks, diffusers name -> BFL name (Chroma and FLUX.2 have their own);
    ``family`` picks the blocks' table (``loratui.lora.transformer_names``)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if place_renamed(key, tensor, top, {"norm_out.linear"}, out):
            continue
        module, _, kind = key.rpartition(".")
        m = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", module)
        if m is None:
            raise ValueError(f"no FLUX checkpoint name for transformer tensor {key!r}")
        norms = _NORMS[m.group(1)]
        if m.group(3) in norms:
            prefix = "double_blocks" if m.group(1) == "transformer_blocks" else "single_blocks"
            out[f"{prefix}.{m.group(2)}.{norms[m.group(3)]}.scale"] = tensor
            continue
        bfl, _, _ = flux_bfl_module(module, family)
        fused.setdefault(f"{bfl}.{kind}", {})[module] = tensor
    out.update(fuse_rows(fused, lambda name: flux_diffusers_parts(name, family)))
    return out


def bfl_to_flux(state: Mapping[str, torch.Tensor], config: Mapping[str, object],
                top: Mapping[str, str] = _TOP) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flux_to_bfl` for a model of this config (the fused widths come from it, so any
    FLUX size loads, not only FLUX.1's). ComfyUI's ``model.diffusion_model.`` prefix is accepted."""
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])  # type: ignore[call-overload]
    from_bfl = {v: k for k, v in top.items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        key = key.removeprefix("model.diffusion_model.")
        if place_renamed(key, tensor, from_bfl, {"final_layer.adaLN_modulation.1"}, out):
            continue
        module, _, kind = key.rpartition(".")
        m = re.fullmatch(r"(double|single)_blocks\.(\d+)\.(.+)", module)
        if m is None:
            raise ValueError(f"{key!r} is not a FLUX transformer tensor")
        list_name = "transformer_blocks" if m.group(1) == "double" else "single_transformer_blocks"
        norms = {v: k for k, v in _NORMS[list_name].items()}
        if m.group(3) in norms and kind == "scale":
            out[f"{list_name}.{m.group(2)}.{norms[m.group(3)]}.weight"] = tensor
            continue
        parts = flux_diffusers_parts(module)
        dims = [inner] * len(parts) if len(parts) > 1 else [tensor.shape[0]]
        if len(parts) == 4:
            dims[-1] = tensor.shape[0] - 3 * inner  # the MLP input, 4x wide in FLUX.1
        for path, piece in zip(parts, torch.split(tensor, dims, dim=0)):
            out[f"{path}.{kind}"] = piece.contiguous()
    return out
