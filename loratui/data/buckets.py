"""Aspect-ratio buckets: a set of (width, height) training sizes of about the
same area, so portrait and landscape pictures train whole instead of being
squashed or center-cropped to a square."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from PIL import Image

Bucket = tuple[int, int]  # (width, height)

# Buckets span aspect ratios from 1:4 to 4:1; beyond that an image is mostly
# cropped away anyway, and a very thin bucket wastes a batch on one image.
MAX_ASPECT = 4.0


def make_buckets(
    resolution: int,
    *,
    step: int = 64,
    min_side: int | None = None,
    max_side: int | None = None,
) -> list[Bucket]:
    """All (width, height) buckets for a square training ``resolution``.

    Every side is a multiple of ``step``, every area is at most
    ``resolution**2``, and (resolution, resolution) is always present.  By
    default sides run from half the resolution (at least one step) to twice
    it.  Sorted from the tallest to the widest.
    """
    if step <= 0 or step % 8:
        raise ValueError(f"bucket step {step} must be a positive multiple of 8 (the VAE downsamples by 8)")
    if resolution < step or resolution % step:
        lower = max(step, resolution // step * step)
        raise ValueError(
            f"resolution {resolution} is not a multiple of the bucket step {step}; "
            f"use {lower} or {lower + step}"
        )
    if min_side is None:
        min_side = max(step, resolution // 2 // step * step)
    if max_side is None:
        max_side = resolution * 2
    min_side = max(step, _round_up(min_side, step))
    max_side = max(min_side, max_side // step * step)
    area = resolution * resolution

    buckets: set[Bucket] = {(resolution, resolution)}
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, area // width // step * step)
        if height < min_side:
            continue
        if max(width, height) / min(width, height) > MAX_ASPECT + 1e-9:
            continue
        # Both orientations, so portrait gets the same choice as landscape.
        buckets.add((width, height))
        buckets.add((height, width))
    return sorted(buckets, key=lambda b: (b[0] / b[1], b[0]))


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def choose_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest to width:height.

    Distance is measured on log(w/h) so 1:2 and 2:1 are equally far from
    1:1.  On a tie the larger bucket wins (less upscaling).
    """
    if not buckets:
        raise ValueError("no buckets to choose from")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}×{height} is empty")
    target = math.log(width / height)
    return min(
        buckets,
        key=lambda b: (round(abs(math.log(b[0] / b[1]) - target), 12), -b[0] * b[1], b),
    )


@dataclass
class CroppedImage:
    image: Image.Image  # RGB, exactly the bucket size
    original_size: tuple[int, int]  # (height, width) before resizing, as SDXL wants
    crop_top_left: tuple[int, int]  # (top, left) in the resized image's coordinates
    target_size: tuple[int, int]  # (height, width) of the bucket

    @property
    def kept_fraction(self) -> float:
        """Share of the original picture that survives the crop."""
        h, w = self.original_size
        th, tw = self.target_size
        scale = max(tw / w, th / h)
        return (tw * th) / (w * scale * h * scale)


def crop_plan(width: int, height: int, bucket: Bucket) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized_w, resized_h), (top, left)) for covering ``bucket`` with a
    width×height picture and cropping its center."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    rw = max(bw, round(width * scale))
    rh = max(bh, round(height * scale))
    return (rw, rh), ((rh - bh) // 2, (rw - bw) // 2)


def resize_and_crop(img: Image.Image, bucket: Bucket, *, flip: bool = False) -> CroppedImage:
    """Scale ``img`` to cover ``bucket``, center-crop the excess, optionally
    mirror it.

    The crop is done by resizing only the source region that survives, so a
    1×4000 sliver never becomes a 256×1,024,000 intermediate image.  When
    flipped, the reported left offset is mirrored too, as it would be for a
    picture that had been flipped before cropping.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    bw, bh = bucket
    (rw, rh), (top, left) = crop_plan(w, h, bucket)
    sx, sy = rw / w, rh / h
    box = (left / sx, top / sy, (left + bw) / sx, (top + bh) / sy)
    shrink = min(sx, sy)
    # reducing_gap first shrinks by an integer factor with a box filter: much
    # faster for big photos, no visible difference after LANCZOS.
    resized = img.resize(
        (bw, bh),
        Image.Resampling.LANCZOS,
        box=box,
        reducing_gap=3.0 if shrink < 1 / 3 else None,
    )
    if flip:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = rw - (left + bw)
    return CroppedImage(
        image=resized,
        original_size=(h, w),
        crop_top_left=(top, left),
        target_size=(bh, bw),
    )
