"""A fixed evaluation loss: the same noise and timesteps every time it is measured.

The training loss jumps with the random timestep of each step; this one does
not. Each image gets the same noise and the same timesteps at every
evaluation: a few per band of the schedule (stratified, so every part of the
schedule is covered), drawn once from the seed and the image's hash. Two
evaluations of the same images therefore differ only by the weights. Used for
the validation loss on held-out images (``validation.*``), by the learning
test and by the benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from loratui.data.captions import build_caption
from loratui.engine.dataset import Batch, Item
from loratui.engine.step import Conditioning

if TYPE_CHECKING:
    from loratui.engine.session import TrainingSession

BANDS = 4
"""Timestep bands reported separately: fine detail (low t) to composition (high t) learn at different rates."""
TIMESTEPS_PER_BAND = 2


@dataclass(frozen=True)
class EvalResult:
    loss: float  # the mean of the band losses
    band_losses: dict[str, float]
    images: int
    seconds: float


def band_edges(num_train_timesteps: int, bands: int = BANDS) -> list[tuple[int, int]]:
    """[lo, hi) of each band, splitting the schedule into equal parts."""
    edges = [round(i * num_train_timesteps / bands) for i in range(bands + 1)]
    return [(edges[i], edges[i + 1]) for i in range(bands)]


def band_label(lo: int, hi: int) -> str:
    return f"t{lo}-{hi - 1}"


def stratified_timesteps(num_train_timesteps: int, seed: int, *, bands: int = BANDS,
                         per_band: int = TIMESTEPS_PER_BAND) -> list[list[int]]:
    """``per_band`` timesteps in each band, one from each equal slice of it, placed by the seed."""
    rng = random.Random(f"{seed}:validation-timesteps")
    out = []
    for lo, hi in band_edges(num_train_timesteps, bands):
        width = (hi - lo) / per_band
        out.append([min(hi - 1, int(lo + width * (k + rng.random()))) for k in range(per_band)])
    return out


def _noise_seed(seed: int, item: Item, band: int) -> int:
    # Keyed by the image's content, not its position: adding an image elsewhere changes no other noise.
    digest = hashlib.sha256(f"{seed}:{item.sha256}:{band}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _repeat(cond: Conditioning, n: int) -> Conditioning:
    """The conditioning of one image for a batch of ``n`` timesteps of it."""
    values = {f.name: getattr(cond, f.name) for f in dataclasses.fields(cond)}
    return type(cond)(**{k: v.repeat_interleave(n, dim=0) if isinstance(v, torch.Tensor) else v
                         for k, v in values.items()})


def evaluate_items(session: TrainingSession, items: Sequence[Item], *, seed: int) -> EvalResult:
    """The fixed loss over ``items``, per band and averaged; the weights are not touched."""
    started = time.perf_counter()
    acc = session.accelerator
    # The plain module: a DDP wrapper would start collectives that the other processes do not expect.
    unet = acc.unwrap_model(session.unet)
    schedule = session.noise_scheduler
    num_t = int(schedule.config.num_train_timesteps)
    edges = band_edges(num_t)
    timesteps = stratified_timesteps(num_t, seed)
    sums = [0.0] * len(edges)
    was_training = unet.training
    unet.eval()
    try:
        with torch.no_grad():
            for item in items:
                cached = item.latents[False]
                caption = build_caption(item.caption, trigger_word=session.cfg.data.trigger_word,
                                        rng=random.Random(0))
                batch = Batch(cached.mean.unsqueeze(0), [caption], [cached.original_size],
                              [cached.crop_top_left], [cached.target_size])
                with acc.autocast():
                    cond = session.conditioning(batch)
                latents = batch.latents.to(acc.device)
                for b, ts in enumerate(timesteps):
                    n = len(ts)
                    gen = torch.Generator("cpu").manual_seed(_noise_seed(seed, item, b))
                    noise = torch.randn((n, *latents.shape[1:]), generator=gen)
                    with acc.autocast():
                        # The family's own objective (a flow model reads timestep t as sigma t/1000).
                        loss = session.loss(latents.expand(n, *latents.shape[1:]), _repeat(cond, n), gen,
                                            timesteps=torch.tensor(ts), noise=noise)
                    sums[b] += float(loss)
    finally:
        if was_training:
            unet.train()
    count = max(1, len(items))
    bands = {band_label(lo, hi): sums[i] / count for i, (lo, hi) in enumerate(edges)}
    mean = sum(bands.values()) / len(bands)
    return EvalResult(mean, bands, len(items), time.perf_counter() - started)


def fixed_eval_loss(session: TrainingSession, *, seed: int = 1234) -> float:
    """The fixed loss over the training images themselves (how well the LoRA fits what it saw)."""
    return evaluate_items(session, session.dataset.items, seed=seed).loss
