"""Build a folder of awkward training images and captions, with Pillow only.

Each file is one way real datasets go wrong (see the reference notes on known
failures).  ``make_corpus(dir)`` returns file name → expected handling, as
``"<status>"`` or ``"<status>: <phrase>"`` where status is ok / converted /
skipped / ignored / notice and the phrase must appear in what the scan says
about that entry.

    python tests/make_bad_corpus.py /tmp/bad_images
"""

from __future__ import annotations

import codecs
import os
import struct
import sys
import zlib
from array import array
from pathlib import Path

from PIL import Image, ImageDraw

# Four distinct quadrant colours: every one of the 8 EXIF orientations moves
# at least one of them, so a wrongly oriented load is always visible.
QUADRANTS = {
    "top_left": (220, 30, 30),
    "top_right": (30, 200, 30),
    "bottom_left": (30, 30, 220),
    "bottom_right": (240, 240, 240),
}
ORIENTED_SIZE = (96, 64)  # not square, so a missed 90° turn also swaps w and h

# What a viewer does to the stored pixels for each orientation, inverted: the
# file stores the upright picture transformed this way.
_STORE_TRANSFORM = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # viewer turns it 90° clockwise back
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}

CAFE = "café au lait, crème brûlée"


_marks = iter(range(1, 10_000))


def upright_picture(size: tuple[int, int] = ORIENTED_SIZE, *, mark: bool = True) -> Image.Image:
    """The four-quadrant picture; ``mark`` adds a dot of a new grey each call so
    no two corpus files are byte-identical (the scan reports duplicates)."""
    w, h = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, w // 2 - 1, h // 2 - 1), fill=QUADRANTS["top_left"])
    draw.rectangle((w // 2, 0, w - 1, h // 2 - 1), fill=QUADRANTS["top_right"])
    draw.rectangle((0, h // 2, w // 2 - 1, h - 1), fill=QUADRANTS["bottom_left"])
    draw.rectangle((w // 2, h // 2, w - 1, h - 1), fill=QUADRANTS["bottom_right"])
    if mark and w >= 4 and h >= 4:
        grey = next(_marks) * 7 % 256
        draw.rectangle((w // 2 - 2, h // 2 - 2, w // 2 + 1, h // 2 + 1), fill=(grey, grey, grey))
    return img


def noise_picture(size: tuple[int, int], seed: int = 1) -> Image.Image:
    """Incompressible-ish content so a JPEG has plenty of scan data to truncate."""
    return Image.effect_noise(size, 64 + seed).convert("RGB").resize(size)


def save_oriented_jpeg(path: Path, orientation: int) -> None:
    picture = upright_picture(mark=False)
    transform = _STORE_TRANSFORM[orientation]
    stored = picture.transpose(transform) if transform is not None else picture
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())


def sixteen_bit_gradient(size: tuple[int, int] = (256, 16)) -> Image.Image:
    """A left-to-right ramp over the whole 0…65535 range, as mode I;16."""
    w, h = size
    row = [round(x * 65535 / (w - 1)) for x in range(w)]
    values = array("H", row * h)
    if sys.byteorder == "big":
        values.byteswap()
    return Image.frombytes("I;16", size, values.tobytes())


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny 1-bit PNG whose header claims width×height pixels.

    Only the header matters: Pillow refuses it at open time, before any pixel
    data would be read, so the truncated pixel data is never reached.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _images(d: Path, expected: dict[str, str]) -> None:
    Image.new("CMYK", (64, 48), (0, 180, 255, 20)).save(d / "cmyk.jpg", "JPEG")
    expected["cmyk.jpg"] = "converted: converted from CMYK to RGB"

    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(palette).rectangle((8, 8, 23, 23), fill=1)
    palette.save(d / "palette_transparent.png", transparency=0)
    expected["palette_transparent.png"] = "converted: composited on white"

    la = Image.new("LA", (32, 32), (0, 0))
    ImageDraw.Draw(la).rectangle((8, 8, 23, 23), fill=(60, 255))
    la.save(d / "grey_alpha.png")
    expected["grey_alpha.png"] = "converted: composited on white"

    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).ellipse((4, 4, 27, 27), fill=(200, 40, 40, 255))
    rgba.save(d / "rgba.png")
    expected["rgba.png"] = "converted: composited on white"

    sixteen_bit_gradient().save(d / "grey16.png")
    expected["grey16.png"] = "converted: 16-bit"

    Image.new("L", (64, 64), 128).save(d / "greyscale.jpg")
    expected["greyscale.jpg"] = "converted: greyscale"

    for n in range(1, 9):
        save_oriented_jpeg(d / f"exif_orientation_{n}.jpg", n)
        expected[f"exif_orientation_{n}.jpg"] = "ok" if n == 1 else f"ok: EXIF orientation ({n})"

    noise_picture((128, 96)).save(d / "progressive.jpg", "JPEG", progressive=True, quality=90)
    expected["progressive.jpg"] = "ok"
    upright_picture().save(d / "photo.webp", "WEBP")
    expected["photo.webp"] = "ok"
    upright_picture().save(d / "bitmap.bmp", "BMP")
    expected["bitmap.bmp"] = "ok"

    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    frames[0].save(d / "animated.webp", "WEBP", save_all=True, append_images=frames[1:], duration=100)
    expected["animated.webp"] = "converted: only the first frame"
    frames[0].save(d / "animated.gif", "GIF", save_all=True, append_images=frames[1:], duration=100)
    expected["animated.gif"] = "skipped: not a supported format"

    whole = d / "truncated.jpg"
    noise_picture((256, 256), seed=2).save(whole, "JPEG", quality=90)
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) * 2 // 3])
    expected["truncated.jpg"] = "skipped: truncated"

    (d / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "skipped: empty file"
    (d / "not_really.png").write_text("This is a note, not a picture.\n")
    expected["not_really.png"] = "skipped: not an image"

    # Above the error limit (refused at open) and above the warning limit.
    limit = Image.MAX_IMAGE_PIXELS or 89_478_485
    side = int((limit * 2.5) ** 0.5)
    (d / "bomb.png").write_bytes(bomb_png(side, side))
    expected["bomb.png"] = "skipped: too large"
    side = int((limit * 1.5) ** 0.5)
    (d / "bomb_warning_level.png").write_bytes(bomb_png(side, side))
    expected["bomb_warning_level.png"] = "skipped: too large"

    upright_picture((40, 40)).save(d / "tiny.png")
    expected["tiny.png"] = "ok: too small"
    Image.new("RGB", (1, 4000), (90, 90, 90)).save(d / "sliver.png")
    expected["sliver.png"] = "ok: extreme aspect ratio"


def _captions(d: Path, expected: dict[str, str]) -> None:
    for stem, payload, phrase in (
        ("caption_utf8_bom", codecs.BOM_UTF8 + CAFE.encode("utf-8"), ""),
        ("caption_utf16", CAFE.encode("utf-16"), "UTF-16"),
        ("caption_latin1", CAFE.encode("latin-1"), "not UTF-8"),
        ("caption_empty", b"", "is empty"),
        ("caption_too_long", ("tag, " * 100).encode(), "will be truncated"),
        ("caption_multiline", b"first tag, second tag\nA sentence on line two.\n", "joined"),
    ):
        upright_picture((64, 64)).save(d / f"{stem}.png")
        (d / f"{stem}.txt").write_bytes(payload)
        expected[f"{stem}.png"] = f"ok: {phrase}" if phrase else "ok"
    upright_picture((64, 64)).save(d / "caption_other_ext.png")
    (d / "caption_other_ext.caption").write_text("kohya style caption")
    expected["caption_other_ext.png"] = "ok: caption read from caption_other_ext.caption"
    (d / "orphan.txt").write_text("a caption whose image was deleted")
    expected["orphan.txt"] = "notice: have no image beside them"


def _names_and_links(d: Path, expected: dict[str, str]) -> None:
    for name in ("with space.jpg", "ünïcødé 画像.png", "new\nline.png"):
        upright_picture((64, 64)).save(d / name)
        expected[name] = "ok"

    (d / "link_to_valid.jpg").symlink_to("progressive.jpg")
    expected["link_to_valid.jpg"] = "ok: same file as progressive.jpg"
    (d / "broken_link.jpg").symlink_to("does_not_exist.jpg")
    expected["broken_link.jpg"] = "skipped: broken symlink"
    (d / "self_loop.png").symlink_to("self_loop.png")
    expected["self_loop.png"] = "skipped: symlink loop"
    (d / "loop").symlink_to(".")
    expected["loop"] = "notice: symlink loop"

    locked = d / "unreadable.jpg"
    upright_picture((64, 64)).save(locked)
    locked.chmod(0)
    # root reads anything; there the permission case cannot be produced.
    expected["unreadable.jpg"] = "ok" if _running_as_root() else "skipped: permission denied"

    (d / ".hidden.jpg").write_bytes(b"")
    expected[".hidden.jpg"] = "ignored"
    (d / "notes.md").write_text("dataset notes\n")
    expected["notes.md"] = "ignored"

    sub = d / "3_repeated" / "nested"
    sub.mkdir(parents=True)
    upright_picture((64, 64)).save(sub / "deep.png")
    expected["3_repeated/nested/deep.png"] = "ok"


def make_corpus(directory: Path) -> dict[str, str]:
    """Fill ``directory`` (created if needed) and return name → expected handling.

    Names are paths relative to ``directory``, as the scan reports them.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    _images(directory, expected)
    _captions(directory, expected)
    _names_and_links(directory, expected)
    return expected


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/make_bad_corpus.py DIR")
    target = Path(sys.argv[1])
    for name, handling in make_corpus(target).items():
        print(f"{name!r:40} {handling}")
    if _running_as_root():
        print("note: running as root, so unreadable.jpg is readable here")
