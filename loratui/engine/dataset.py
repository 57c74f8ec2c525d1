"""Turns a scanned image folder into cached latents and per-step batches.

Preparation runs once before training: every usable image is loaded,
resized into its bucket and VAE-encoded (or found in the cache). After that
a training step touches no image file and runs no VAE: a batch is a stack of
cached tensors plus captions built for that step.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from loratui.data.buckets import resize_and_crop
from loratui.data.captions import build_caption
from loratui.data.images import ImageProblem, image_to_tensor, load_image
from loratui.engine.batches import BatchPlan, Entry
from loratui.engine.latent_cache import CachedLatent, LatentCache
from loratui.engine.step import sample_latents


@dataclass
class Item:
    path: Path
    rel: str
    sha256: str
    bucket: tuple[int, int]
    repeats: int
    caption: str  # raw caption text; trigger word and shuffling are applied per step
    latents: dict[bool, CachedLatent]  # by flip


@dataclass
class Batch:
    latents: torch.Tensor  # [B, 4, h, w], sampled from the cached posterior
    captions: list[str]
    original_sizes: list[tuple[int, int]]
    crops: list[tuple[int, int]]
    target_sizes: list[tuple[int, int]]


class PreparedDataset:
    def __init__(self, items: list[Item], plan: BatchPlan, skipped: list[str]) -> None:
        self.items = items
        self.plan = plan
        self.skipped = skipped  # rel paths dropped during encoding (already reported by the scan)

    def fingerprint(self) -> str:
        """Identity of what the run trains on; resume refuses a different one."""
        h = hashlib.sha256()
        for item in self.items:
            h.update(f"{item.sha256}:{item.bucket}:{item.repeats}:{item.caption}\n".encode())
        return h.hexdigest()[:16]

    def captions_by_folder(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for item in self.items:
            folder = str(Path(item.rel).parent)
            out[folder if folder != "." else "images"].append(item.caption)
        return out

    def batch(self, entries: list[Entry], *, micro_batch: int, seed: int, trigger_word: str,
              shuffle_tags: bool, keep_tokens: int, caption_dropout: float,
              generator: torch.Generator) -> Batch:
        rng = random.Random(f"{seed}:captions:{micro_batch}")
        means, stds, captions, sizes, crops, targets = [], [], [], [], [], []
        for entry in entries:
            item = self.items[entry.item]
            cached = item.latents[entry.flip]
            means.append(cached.mean)
            stds.append(cached.std)
            captions.append(build_caption(item.caption, trigger_word=trigger_word, shuffle_tags=shuffle_tags,
                                          keep_tokens=keep_tokens, dropout=caption_dropout, rng=rng))
            sizes.append(cached.original_size)
            crops.append(cached.crop_top_left)
            targets.append(cached.target_size)
        latents = sample_latents(torch.stack(means), torch.stack(stds), generator)
        return Batch(latents, captions, sizes, crops, targets)


def encode_image_latent(vae: torch.nn.Module, scaling_factor: float, path: Path,
                        bucket: tuple[int, int], flip: bool, shift_factor: float = 0.0) -> CachedLatent:
    loaded = load_image(path)
    cropped = resize_and_crop(loaded.image, bucket, flip=flip)
    pixels = image_to_tensor(cropped.image).unsqueeze(0)
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    with torch.no_grad():
        dist = vae.encode(pixels.to(device, dtype)).latent_dist
        # FLUX's and SD3's VAEs centre the latents (shift) before scaling them; a shifted posterior
        # keeps its spread, so only the mean moves.
        mean = ((dist.mean.float() - shift_factor) * scaling_factor)[0].cpu()
        std = (dist.std.float() * scaling_factor)[0].cpu()
    if not torch.isfinite(mean).all():
        raise ImageProblem(path, "the VAE produced NaN latents for it (an fp16 VAE overflow?); skipped")
    return CachedLatent(mean, std, cropped.original_size, cropped.crop_top_left, cropped.target_size)


def prepare_dataset(records: list, *, vae: torch.nn.Module, scaling_factor: float, cache: LatentCache | None,
                    shift_factor: float = 0.0,
                    batch_size: int, seed: int, flip: bool,
                    progress: Callable[[int, int, str], None] | None = None) -> PreparedDataset:
    """Encode (or load from cache) every usable record of a scan report."""
    items: list[Item] = []
    skipped: list[str] = []
    total = len(records)
    for i, rec in enumerate(records):
        if progress:
            progress(i, total, rec.rel)
        latents: dict[bool, CachedLatent] = {}
        try:
            for variant in ((False, True) if flip else (False,)):
                def compute(variant: bool = variant) -> CachedLatent:
                    return encode_image_latent(vae, scaling_factor, rec.path, rec.bucket, variant, shift_factor)

                if cache is None:
                    latents[variant] = compute()
                else:
                    latents[variant] = cache.get_or_compute(rec.sha256, rec.bucket, variant, compute)
        except ImageProblem as exc:
            # The file changed or broke since the scan; training goes on without it.
            skipped.append(f"{rec.rel}: {exc.reason}")
            continue
        items.append(Item(rec.path, rec.rel, rec.sha256, tuple(rec.bucket), rec.repeats, rec.caption or "",
                          latents))
    if progress:
        progress(total, total, "")
    plan = BatchPlan(tuple(it.bucket for it in items), tuple(it.repeats for it in items), batch_size, seed, flip)
    return PreparedDataset(items, plan, skipped)
