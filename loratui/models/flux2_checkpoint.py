"""A FLUX.2 klein transformer as one file in Black Forest Labs' layout (``flux-2-klein-base-4b.safetensors``).

That is the file ComfyUI ("Load Diffusion Model") and diffusers'
``Flux2Transformer2DModel.from_single_file`` read; loratui loads such files
through diffusers' converter (which takes its widths from the file) and
writes merged models back with :func:`flux2_to_original`. The blocks are
named as FLUX.1's in BFL's checkpoints (q/k/v fused into ``qkv``; the single
blocks' ``linear1``/``linear2`` are one layer each in diffusers too); the
modulation shared by all blocks of a kind keeps its name with ``lin`` for
diffusers' ``linear``; the final norm's modulation is stored (shift, scale).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from loratui.models.flux_checkpoint import flux_to_bfl

_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
}  # fmt: skip


def flux2_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers Flux2Transformer2DModel state dict -> BFL checkpoint keys; every tensor placed or an error."""
    return flux_to_bfl(state, top=_TOP, family="flux2_klein")
