"""Sixel encoding of a picture, exactly its own size, with every colour register selected before use.

A sixel picture is a DCS string: ``ESC P 0;1;0 q``, the raster size ``"1;1;W;H``, the
colour registers (``#N;2;r;g;b``, r, g, b in percent), then the pixels in bands six rows
tall. In each band a colour's columns are written after selecting its register with
``#N``; ``$`` returns to the start of the band for the next colour and ``-`` moves to the
next band.

Two things real terminals insist on, and a stand-in did not show:

* Defining a register does not select it in xterm or foot: data written before the first
  ``#N`` of a band is painted with whatever register was selected before. Every colour's
  run therefore starts with its own ``#N``.
* The picture is sent at exactly its size, never padded to a box: padding is pixels, and
  with ``P2 = 1`` (the ``0;1;0`` above) pixels not written stay as the terminal had them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

MAX_COLORS = 256
BAND = 6
"""Pixel rows per sixel band."""

_RUN = re.compile(rb"(.)\1{3,}")
"""Four or more equal sixel characters: shorter as ``!N`` plus the character."""


def _rle(row: bytes) -> bytes:
    return _RUN.sub(lambda m: b"!%d%s" % (m.end() - m.start(), m.group(1)), row)


def quantize(picture: PILImage, colors: int = MAX_COLORS) -> PILImage:
    """The picture in at most ``colors`` palette colours.

    Octree, undithered: of Pillow's methods the fastest, and its colours form regions, which
    sixel sends in runs (median cut made a photo 1.6× larger, 6× on a noisy one).
    """
    from PIL import Image

    rgb = picture.convert("RGB")
    return rgb.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)


def encode(picture: PILImage, colors: int = MAX_COLORS) -> str:
    """The picture as one sixel DCS string, its size unchanged."""
    paletted = quantize(picture, colors)
    width, height = paletted.size
    index = np.asarray(paletted, dtype=np.uint8)
    palette = paletted.getpalette() or []
    used = np.flatnonzero(np.bincount(index.ravel(), minlength=MAX_COLORS))
    out = bytearray(b'\x1bP0;1;0q"1;1;%d;%d' % (width, height))
    for register in used:
        r, g, b = palette[3 * register:3 * register + 3]
        out += b"#%d;2;%d;%d;%d" % (register, _percent(r), _percent(g), _percent(b))
    columns = np.arange(width)
    weights = (1 << np.arange(BAND, dtype=np.uint8)).astype(np.uint8)
    for top in range(0, height, BAND):
        band = index[top:top + BAND]
        masks = np.zeros((MAX_COLORS, width), dtype=np.uint8)
        for row, bit in zip(band, weights):
            masks[row, columns] |= bit  # each (colour, column) pair appears once per row
        first = True
        for register in np.unique(band):
            mask = masks[register]
            last = int(np.flatnonzero(mask)[-1]) + 1  # nothing after the colour's last column
            if not first:
                out += b"$"
            out += b"#%d" % register
            out += _rle((mask[:last] + 63).tobytes())
            first = False
        out += b"-"
    if out.endswith(b"-"):
        out = out[:-1]  # a final newline would move the cursor (and could scroll) for nothing
    out += b"\x1b\\"
    return out.decode("ascii")


def _percent(value: int) -> int:
    return (value * 100 + 127) // 255
