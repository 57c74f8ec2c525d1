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
from loratui.data.concepts import Concept
from loratui.data.images import ImageProblem, image_to_tensor, load_image
from loratui.data.masks import mask_grid
from loratui.engine.batches import BatchPlan, Entry
from loratui.engine.latent_cache import CachedLatent, LatentCache
from loratui.engine.step import sample_latents, to_device


@dataclass
class Item:
    path: Path
    rel: str
    sha256: str
    bucket: tuple[int, int]
    repeats: int
    caption: str  # raw caption text; trigger word and shuffling are applied per step
    latents: dict[bool, CachedLatent]  # by flip
    concept: int = 0  # index into PreparedDataset.concepts
    weight: float = 1.0  # factor on this image's loss: the concept's loss_weight, × prior_loss_weight if reg
    masks: dict[bool, torch.Tensor] | None = None  # by flip: [1, h, w] loss weights on the latent grid


@dataclass
class Batch:
    latents: torch.Tensor  # [B, 4, h, w], sampled from the cached posterior
    captions: list[str]
    original_sizes: list[tuple[int, int]]
    crops: list[tuple[int, int]]
    target_sizes: list[tuple[int, int]]
    # Per-image loss factors [B], None when every one is 1 (one concept, no regularization).
    loss_weights: torch.Tensor | None = None
    # Per-latent-pixel loss weights [B, 1, h, w], None when no image in the batch is masked.
    masks: torch.Tensor | None = None


class PreparedDataset:
    def __init__(self, items: list[Item], plan: BatchPlan, skipped: list[str],
                 concepts: list[Concept] | None = None) -> None:
        self.items = items
        self.plan = plan
        self.skipped = skipped  # rel paths dropped during encoding (already reported by the scan)
        self.concepts = concepts or [Concept(0, "images", Path("images"), "data.images")]

    def fingerprint(self) -> str:
        """Identity of what the run trains on; resume refuses a different one."""
        h = hashlib.sha256()
        for item in self.items:
            line = f"{item.sha256}:{item.bucket}:{item.repeats}:{item.caption}"
            if item.weight != 1.0 or item.masks is not None or item.concept:
                mask_sum = sum(float(m.sum()) for m in item.masks.values()) if item.masks else 0.0
                line += f":{item.concept}:{item.weight!r}:{mask_sum!r}"
            h.update(f"{line}\n".encode())
        return h.hexdigest()[:16]

    def captions_by_folder(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for item in self.items:
            folder = str(Path(item.rel).parent)
            out[folder if folder != "." else "images"].append(item.caption)
        return out

    def batch(self, entries: list[Entry], *, micro_batch: int, seed: int, generator: torch.Generator,
              trigger_word: str | None = None, shuffle_tags: bool | None = None, keep_tokens: int | None = None,
              caption_dropout: float | None = None) -> Batch:
        """The micro-batch's latents and captions. Captions follow each image's concept; a caption
        setting passed here overrides it for every image (benchmarks use that)."""
        rng = random.Random(f"{seed}:captions:{micro_batch}")
        means, stds, captions, sizes, crops, targets = [], [], [], [], [], []
        for entry in entries:
            item = self.items[entry.item]
            c = self.concepts[item.concept]
            cached = item.latents[entry.flip]
            means.append(cached.mean)
            stds.append(cached.std)
            captions.append(build_caption(
                item.caption, trigger_word=c.trigger_word if trigger_word is None else trigger_word,
                shuffle_tags=c.shuffle_tags if shuffle_tags is None else shuffle_tags,
                keep_tokens=c.keep_tokens if keep_tokens is None else keep_tokens,
                dropout=c.caption_dropout if caption_dropout is None else caption_dropout, rng=rng))
            sizes.append(cached.original_size)
            crops.append(cached.crop_top_left)
            targets.append(cached.target_size)
        latents = sample_latents(torch.stack(means), torch.stack(stds), generator)
        chosen = [self.items[e.item] for e in entries]
        weights = None
        if any(it.weight != 1.0 for it in chosen):
            weights = torch.tensor([it.weight for it in chosen], dtype=torch.float32)
        masks = None
        if any(it.masks is not None for it in chosen):
            h, w = latents.shape[-2:]
            masks = torch.stack([it.masks[e.flip] if it.masks is not None else torch.ones(1, h, w)
                                 for it, e in zip(chosen, entries)])
        return Batch(latents, captions, sizes, crops, targets, weights, masks)


def loss_weights_on(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's loss weights as ``diffusion_loss`` keyword arguments, on ``device``; empty when none."""
    out = {}
    if batch.masks is not None:
        out["pixel_weight"] = to_device(batch.masks, device)
    if batch.loss_weights is not None:
        out["sample_weight"] = to_device(batch.loss_weights, device)
    return out


# (vae, pixels [1, 3, H, W]) -> the normalised posterior's (mean, std), each [1, C, h, w].
LatentEncoder = Callable[[torch.nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def encode_image_latent(vae: torch.nn.Module, scaling_factor: float, path: Path,
                        bucket: tuple[int, int], flip: bool, shift_factor: float = 0.0,
                        latent_encoder: LatentEncoder | None = None) -> CachedLatent:
    """``latent_encoder``: a family's own encoding and normalisation of the posterior (mean, std), where a
    scale and a shift do not describe it (FLUX.2's batch-norm statistics, Qwen-Image's video VAE and
    per-channel statistics)."""
    loaded = load_image(path)
    cropped = resize_and_crop(loaded.image, bucket, flip=flip)
    pixels = image_to_tensor(cropped.image).unsqueeze(0)
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    with torch.no_grad():
        if latent_encoder is not None:
            mean, std = (t.float()[0].cpu() for t in latent_encoder(vae, pixels.to(device, dtype)))
        else:
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
                    progress: Callable[[int, int, str], None] | None = None,
                    concepts: list[Concept] | None = None, prior_loss_weight: float = 1.0,
                    latent_encoder: LatentEncoder | None = None) -> PreparedDataset:
    """Encode (or load from cache) every usable record of a scan report.

    Records with 0 repeats (regularization images beyond what balancing uses) are left out."""
    items: list[Item] = []
    skipped: list[str] = []
    total = len(records)
    for i, rec in enumerate(records):
        if progress:
            progress(i, total, rec.rel)
        if rec.repeats < 1:
            continue
        latents: dict[bool, CachedLatent] = {}
        masks: dict[bool, torch.Tensor] | None = None
        try:
            for variant in ((False, True) if flip else (False,)):
                def compute(variant: bool = variant) -> CachedLatent:
                    return encode_image_latent(vae, scaling_factor, rec.path, rec.bucket, variant, shift_factor,
                                               latent_encoder)

                if cache is None:
                    latents[variant] = compute()
                else:
                    latents[variant] = cache.get_or_compute(rec.sha256, rec.bucket, variant, compute)
            if rec.mask is not None:
                masks = {v: mask_grid(rec.path, rec.mask, tuple(rec.bucket), v) for v in latents}
        except (ImageProblem, OSError) as exc:
            # The file changed or broke since the scan; training goes on without it.
            skipped.append(f"{rec.rel}: {getattr(exc, 'reason', None) or exc}")
            continue
        weight = concepts[rec.concept].sample_weight(prior_loss_weight) if concepts else 1.0
        items.append(Item(rec.path, rec.rel, rec.sha256, tuple(rec.bucket), rec.repeats, rec.caption or "",
                          latents, rec.concept, weight, masks))
    if progress:
        progress(total, total, "")
    plan = BatchPlan(tuple(it.bucket for it in items), tuple(it.repeats for it in items), batch_size, seed, flip)
    return PreparedDataset(items, plan, skipped, concepts)
