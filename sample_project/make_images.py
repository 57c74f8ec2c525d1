"""Recreate sample_project/images: a small, committed toy dataset.

The pictures show one made-up subject, "zxc toy" (a red ball with a yellow
stripe), on varied backgrounds, so a LoRA has something consistent to learn.
Run once from the repository root: ``python sample_project/make_images.py``.
Deterministic: the same files every time.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
BACKGROUNDS = [
    ("blue", (40, 70, 160)), ("green", (50, 130, 60)), ("grey", (128, 128, 128)),
    ("white", (235, 235, 230)), ("purple", (110, 50, 130)), ("orange", (220, 130, 40)),
]
PLACES = ["on a table", "on grass", "in a room", "on the floor"]


def draw(rng: random.Random, size: tuple[int, int], bg: tuple[int, int, int], closeup: bool) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    # A floor line and a few soft shapes so backgrounds differ in more than colour.
    floor = int(h * rng.uniform(0.6, 0.8))
    d.rectangle([0, floor, w, h], fill=tuple(max(0, c - 40) for c in bg))
    for _ in range(3):
        x, y = rng.randrange(w), rng.randrange(floor)
        r = rng.randrange(4, 12)
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(min(255, c + 30) for c in bg))
    radius = int(min(w, h) * (0.38 if closeup else rng.uniform(0.18, 0.28)))
    cx = w // 2 + (0 if closeup else rng.randint(-w // 6, w // 6))
    cy = min(floor, h - radius - 2) if not closeup else h // 2
    d.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(200, 30, 30), outline=(90, 10, 10))
    d.rectangle([cx - radius + 2, cy - radius // 6, cx + radius - 2, cy + radius // 6], fill=(240, 210, 40))
    d.ellipse([cx - radius // 2, cy - radius // 2 - 4, cx - radius // 4, cy - radius // 4 - 4], fill=(250, 200, 200))
    return img


def main() -> None:
    rng = random.Random(7)
    images = HERE / "images"
    closeups = images / "2_closeups"
    closeups.mkdir(parents=True, exist_ok=True)
    n = 0
    for i in range(12):
        name, bg = BACKGROUNDS[i % len(BACKGROUNDS)]
        place = PLACES[i % len(PLACES)]
        size = (128, 128) if i % 3 else (192, 128)  # a few wide images exercise the buckets
        img = draw(rng, size, bg, closeup=False)
        stem = images / f"toy_{i:02d}"
        img.save(stem.with_suffix(".jpg"), quality=88)
        stem.with_suffix(".txt").write_text(f"zxc toy, red ball, {name} background, {place}\n", encoding="utf-8")
        n += 1
    for i in range(4):
        name, bg = BACKGROUNDS[(i * 2 + 1) % len(BACKGROUNDS)]
        img = draw(rng, (128, 128), bg, closeup=True)
        stem = closeups / f"closeup_{i:02d}"
        img.save(stem.with_suffix(".png"), optimize=True)
        stem.with_suffix(".txt").write_text(f"zxc toy, red ball, close-up, {name} background\n", encoding="utf-8")
        n += 1
    print(f"wrote {n} images to {images}")


if __name__ == "__main__":
    main()
