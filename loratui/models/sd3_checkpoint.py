"""An SD3 transformer as one file in the original MMDiT layout (``sd3.5_medium.safetensors``'s keys).

That is the file ComfyUI and diffusers' ``SD3Transformer2DModel.from_single_file``
read: ``model.diffusion_model.`` + ``joint_blocks.N.x_block`` (the image
stream) / ``context_block`` (the text stream). The original fuses diffusers'
q, k, v into one ``qkv`` per stream and attention; the last block, which
only reads the text stream, stores its text modulation as (shift, scale) like
the final layer, where diffusers keeps (scale, shift).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from loratui.models.checkpoint_names import fuse_rows, place_renamed

PREFIX = "model.diffusion_model."
_TOP = {
    "pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder", "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
}  # fmt: skip
_BLOCK = {
    "norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1",
    "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj", "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
}  # fmt: skip
_FUSED = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}
_PART_OF = {part: fused for fused, parts in _FUSED.items() for part in parts}
_BLOCK_KEY = re.compile(r"transformer_blocks\.(\d+)\.(.+)")


def sd3_to_mmdit(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers SD3Transformer2DModel state dict -> the original checkpoint's keys (with ComfyUI's and the
    published files' ``model.diffusion_model.`` prefix); every tensor is placed or an error."""
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
    last = max(blocks, default=-1)
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key == "pos_embed.pos_embed":
            out["pos_embed"] = tensor
            continue
        if place_renamed(key, tensor, _TOP, {"norm_out.linear"}, out):
            continue
        m = _BLOCK_KEY.fullmatch(key)
        if m is None:
            raise ValueError(f"no SD3 checkpoint name for transformer tensor {key!r}")
        index, rest = int(m.group(1)), m.group(2)
        block = f"joint_blocks.{index}"
        # The last block's text stream ends there: diffusers gives it the final layer's norm kind.
        swapped = {"norm1_context.linear"} if index == last else set()
        renamed: dict[str, torch.Tensor] = {}
        if place_renamed(rest, tensor, _BLOCK, swapped, renamed):
            out.update({f"{block}.{k}": v for k, v in renamed.items()})
            continue
        module, _, kind = rest.rpartition(".")
        if module not in _PART_OF:
            raise ValueError(f"no SD3 checkpoint name for transformer tensor {key!r}")
        fused.setdefault(f"{block}.{_PART_OF[module]}.{kind}", {})[module] = tensor
    out.update(fuse_rows(fused, lambda name: _FUSED[name.split(".", 2)[2]]))
    return {PREFIX + k: v for k, v in out.items()}
