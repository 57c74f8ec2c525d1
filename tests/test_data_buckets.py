"""Aspect-ratio buckets and the resize/crop that puts an image into one."""

from __future__ import annotations

import math
import time

import pytest
from PIL import Image, ImageDraw

from loratui.data.buckets import choose_bucket, make_buckets, resize_and_crop


@pytest.mark.parametrize("resolution", [128, 256, 512, 768, 1024])
def test_bucket_properties(resolution: int) -> None:
    buckets = make_buckets(resolution)
    assert (resolution, resolution) in buckets
    assert len(set(buckets)) == len(buckets)
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0 and w >= 64 and h >= 64
        assert w * h <= resolution * resolution
        assert max(w, h) / min(w, h) <= 4.0
    # Symmetric: every landscape bucket has its portrait twin.
    assert {(h, w) for w, h in buckets} == set(buckets)
    ratios = [w / h for w, h in buckets]
    assert ratios == sorted(ratios)


def test_buckets_cover_one_to_four_at_common_resolutions() -> None:
    for resolution in (512, 1024):
        ratios = [w / h for w, h in make_buckets(resolution)]
        assert min(ratios) == pytest.approx(0.25) and max(ratios) == pytest.approx(4.0)
        # The area stays close to the square's, so no bucket is much cheaper to train.
        assert all(w * h >= 0.75 * resolution**2 for w, h in make_buckets(resolution))


def test_small_resolution_stays_sensible() -> None:
    assert make_buckets(64) == [(64, 64)]
    assert make_buckets(64, step=8)[0][0] >= 8
    with pytest.raises(ValueError, match="multiple of the bucket step 64; use 704 or 768"):
        make_buckets(720)


def test_choose_bucket_picks_the_nearest_aspect() -> None:
    buckets = make_buckets(512)
    assert choose_bucket(1000, 1000, buckets) == (512, 512)
    assert choose_bucket(1920, 1080, buckets) == (640, 384)  # 1.78 → 1.67 beats 2.2
    assert choose_bucket(1080, 1920, buckets) == (384, 640)
    assert choose_bucket(1, 4000, buckets) == (256, 1024)
    for w, h in [(300, 200), (200, 333), (4000, 3000), (17, 91)]:
        chosen = choose_bucket(w, h, buckets)
        best = min(abs(math.log((bw / bh) / (w / h))) for bw, bh in buckets)
        assert abs(math.log((chosen[0] / chosen[1]) / (w / h))) == pytest.approx(best)


def test_resize_and_crop_center_crops_to_the_exact_bucket() -> None:
    # 400×200 with red 50 px borders left and right; into a 128×128 bucket the
    # image scales to 256×128 and 64 px go from each side: the red is gone.
    img = Image.new("RGB", (400, 200), (0, 0, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 49, 199), fill=(255, 0, 0))
    draw.rectangle((350, 0, 399, 199), fill=(255, 0, 0))
    out = resize_and_crop(img, (128, 128))
    assert out.image.size == (128, 128) and out.image.mode == "RGB"
    assert out.original_size == (200, 400)
    assert out.crop_top_left == (0, 64)
    assert out.target_size == (128, 128)
    assert out.image.getpixel((0, 64))[0] < 30 and out.image.getpixel((127, 64))[0] < 30
    assert out.kept_fraction == pytest.approx(0.5)


def test_flip_mirrors_pixels_and_crop_offset() -> None:
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    ImageDraw.Draw(img).rectangle((0, 0, 149, 99), fill=(255, 255, 255))
    plain = resize_and_crop(img, (128, 64))
    flipped = resize_and_crop(img, (128, 64), flip=True)
    assert plain.image.getpixel((5, 30)) == (255, 255, 255)
    assert flipped.image.getpixel((5, 30)) == (0, 0, 0)
    # 300×100 → 192×64, 64 px of excess: 32 each side; odd splits mirror exactly.
    assert plain.crop_top_left == (0, 32) and flipped.crop_top_left == (0, 32)
    odd = resize_and_crop(Image.new("RGB", (193, 64)), (64, 64), flip=True)
    assert odd.crop_top_left == (0, 193 - 64 - 64)


def test_sliver_is_cropped_without_a_giant_intermediate() -> None:
    start = time.perf_counter()
    out = resize_and_crop(Image.new("RGB", (1, 4000), (9, 9, 9)), (256, 1024))
    assert time.perf_counter() - start < 1.0
    assert out.image.size == (256, 1024) and out.image.getpixel((100, 500)) == (9, 9, 9)
    assert out.crop_top_left == (511488, 0)


def test_upscale_keeps_the_picture_centered() -> None:
    img = Image.new("RGB", (40, 40), (0, 0, 0))
    img.putpixel((20, 20), (255, 255, 255))
    out = resize_and_crop(img, (512, 512))
    assert out.crop_top_left == (0, 0)
    assert out.image.getpixel((262, 262))[0] > 200  # the dot lands at 20.5 × 12.8
