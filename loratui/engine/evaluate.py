"""A fixed evaluation loss: the same noise and timesteps every time it is measured.

The training loss jumps with the random timestep of each step; this one does
not, so comparing it before and after training shows whether the LoRA learned
the images (used by the learning test and reported by benchmarks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from loratui.data.captions import build_caption
from loratui.engine.dataset import Batch

if TYPE_CHECKING:
    from loratui.engine.session import TrainingSession

EVAL_TIMESTEPS = (50, 200, 400, 600, 800)


def fixed_eval_loss(session: TrainingSession, *, seed: int = 1234) -> float:
    import random

    unet = session.unet
    was_training = unet.training
    unet.eval()
    losses = []
    try:
        with torch.no_grad():
            for index, item in enumerate(session.dataset.items):
                cached = item.latents[False]
                caption = build_caption(item.caption, trigger_word=session.cfg.data.trigger_word,
                                        rng=random.Random(0))
                batch = Batch(cached.mean.unsqueeze(0), [caption], [cached.original_size],
                              [cached.crop_top_left], [cached.target_size])
                cond = session.conditioning(batch)
                latents = batch.latents.to(session.accelerator.device)
                for t in EVAL_TIMESTEPS:
                    gen = torch.Generator("cpu").manual_seed(seed * 1_000_003 + index * 1009 + t)
                    noise = torch.randn(latents.shape, generator=gen)
                    loss = session.loss(latents, cond, gen, timesteps=torch.tensor([t]), noise=noise)
                    losses.append(float(loss))
    finally:
        if was_training:
            unet.train()
    return sum(losses) / len(losses)
