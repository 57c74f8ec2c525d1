"""One fixed UNet call, for tests that compare a model's output before and after a change."""

from __future__ import annotations

import torch


def unet_probe_output(unet, generator: torch.Generator) -> torch.Tensor:
    """The UNet's output on fixed random inputs (with SDXL's pooled and size conditioning when it has them)."""
    cfg = unet.config
    extra = {}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=generator),
                                      "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]])}
    with torch.no_grad():
        return unet(torch.randn(1, 4, 16, 16, generator=generator), 500,
                    torch.randn(1, 77, cfg.cross_attention_dim, generator=generator), **extra).sample
