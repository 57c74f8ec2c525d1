"""Masked loss: which part of each picture the LoRA should learn.

A mask is greyscale, white = learn, black = ignore, grey in between. It comes either from the
image's own alpha channel (``alpha_mask``, opt-in, since most transparent PNGs are not meant as
masks) or from a same-name image in a masks folder (``masks``), looked up at the image's path
relative to its concept folder, with any image extension. The mask is cropped exactly as its image
is, then averaged down to the latent grid (8x smaller), where it weights the loss per latent pixel.

The scan (``attach_masks``) only checks: a missing mask, one of another size or mode, or one
that is all black is reported there, and ``loratui check`` shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from loratui.data.buckets import resize_and_crop
from loratui.data.images import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    import torch

    from loratui.data.concepts import Concept
    from loratui.data.scan import ImageRecord

ALPHA = "alpha"
# Greyscale modes a mask may have; RGB is read as its luminance.
MASK_MODES = ("1", "L", "I", "I;16", "F", "RGB")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# The VAE maps 8x8 pixels to one latent pixel.
LATENT_FACTOR = 8


def find_mask_file(masks_dir: Path, rel_in_concept: str) -> Path | None:
    """``masks/<same relative path>`` with the image's own extension first, then any image extension."""
    rel = Path(rel_in_concept)
    base = masks_dir / rel.parent / rel.stem
    candidates = [masks_dir / rel] + [base.with_name(base.name + ext) for ext in IMAGE_EXTENSIONS]
    for path in candidates:
        if path.is_file():
            return path
    return None


def _open_oriented(path: Path) -> Image.Image:
    im = Image.open(path)
    im.load()
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a bad EXIF block: use the pixels as stored, as for images
        return im


def _alpha_of(im: Image.Image) -> Image.Image | None:
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode not in _ALPHA_MODES:
        return None
    return im.getchannel("A")


def _as_grey(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "I;16"):
        # 16-bit greyscale: scale to 8 bits rather than clip at 255.
        return im.point(lambda v: v / 257).convert("L")
    if im.mode == "F":
        return im.point(lambda v: v * 255).convert("L")
    return im.convert("L")


def _is_empty(grey: Image.Image) -> bool:
    return grey.getextrema()[1] == 0


def attach_masks(records: list[ImageRecord], concept: Concept) -> None:
    """Find and check each usable record's mask; set ``record.mask`` where one will be used."""
    if not concept.alpha_mask and concept.masks is None:
        return
    for r in records:
        if not r.usable:
            continue
        rel = r.rel  # still relative to the concept folder here
        if concept.alpha_mask:
            _check_alpha(r)
        else:
            _check_mask_file(r, concept.masks, rel)


def _skip(record: ImageRecord, reason: str) -> None:
    record.status = "skipped"
    record.problems.append(reason)


def _check_alpha(r: ImageRecord) -> None:
    try:
        alpha = _alpha_of(_open_oriented(r.path))
    except OSError as exc:
        r.problems.append(f"alpha mask: cannot read it again ({exc}); trained without a mask")
        return
    if alpha is None:
        r.problems.append("alpha mask: the image has no alpha channel; trained without a mask (every pixel "
                          "counts)")
        return
    if _is_empty(alpha):
        _skip(r, "alpha mask: the image is fully transparent, so nothing in it would be learned; skipped")
        return
    r.mask = ALPHA


def _check_mask_file(r: ImageRecord, masks_dir: Path, rel: str) -> None:
    path = find_mask_file(masks_dir, rel)
    if path is None:
        r.problems.append(f"no mask: expected {masks_dir.name}/{Path(rel).with_suffix('.png').as_posix()}; "
                          "trained without a mask (every pixel counts)")
        return
    try:
        mask = _open_oriented(path)
    except OSError as exc:
        r.problems.append(f"mask {path.name} cannot be read ({exc}); trained without a mask")
        return
    if mask.mode not in MASK_MODES:
        r.problems.append(f"mask {path.name} has mode {mask.mode}; save it as a greyscale (L) PNG, white = learn; "
                          "trained without a mask")
        return
    if mask.size != (r.width, r.height):
        r.problems.append(f"mask {path.name} is {mask.size[0]}×{mask.size[1]} but the image is "
                          f"{r.width}×{r.height}; make it the image's size; trained without a mask")
        return
    if _is_empty(_as_grey(mask)):
        _skip(r, f"mask {path.name} is all black, so nothing in this image would be learned; skipped")
        return
    r.mask = str(path)


def mask_grid(image_path: Path, mask: str, bucket: tuple[int, int], flip: bool) -> torch.Tensor:
    """The mask cropped as its image is and averaged to the latent grid: float32 [1, h/8, w/8] in 0..1."""
    import torch
    import torch.nn.functional as F

    source = _open_oriented(image_path) if mask == ALPHA else _open_oriented(Path(mask))
    grey = _alpha_of(source) if mask == ALPHA else _as_grey(source)
    assert grey is not None  # checked by the scan
    # resize_and_crop works on RGB; a grey picture survives the round trip unchanged.
    cropped = resize_and_crop(grey.convert("RGB"), bucket, flip=flip).image.getchannel("R")
    w, h = cropped.size
    pixels = torch.frombuffer(bytearray(cropped.tobytes()), dtype=torch.uint8).view(1, 1, h, w)
    grid = F.interpolate(pixels.float() / 255.0, size=(h // LATENT_FACTOR, w // LATENT_FACTOR), mode="area")
    return grid[0]
