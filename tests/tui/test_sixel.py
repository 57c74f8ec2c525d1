"""The sixel bytes: decoded the way xterm and foot read them, they give back the picture.

The decoder below is strict where real terminals are: defining a colour register
(``#N;2;r;g;b``) does not select it; only ``#N`` does. A picture whose first band is
painted before its register is selected (the yellow strip on a green close-up) fails here.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from loratui.tui import sixel

TOKEN = re.compile(r'#(\d+)(?:;2;(\d+);(\d+);(\d+))?|!(\d+)(.)|"(\d+);(\d+);(\d+);(\d+)|([?-~])|(\$)|(-)')


def decode(data: str, background: tuple[int, int, int] = (1, 2, 3)) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels a strict terminal paints (percent colours), and the raster size declared."""
    assert data.startswith("\x1bP0;1;0q") and data.endswith("\x1b\\")
    body = data[len("\x1bP0;1;0q"):-2]
    registers: dict[int, tuple[int, int, int]] = {}
    selected: int | None = None
    raster = (0, 0)
    canvas: dict[tuple[int, int], tuple[int, int, int]] = {}
    x = band = 0
    pos = 0
    while pos < len(body):
        m = TOKEN.match(body, pos)
        assert m, f"unexpected sixel byte {body[pos]!r} at {pos}"
        pos = m.end()
        if m.group(1) is not None:
            if m.group(2) is not None:
                registers[int(m.group(1))] = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
            else:
                selected = int(m.group(1))
        elif m.group(7) is not None:
            raster = (int(m.group(9)), int(m.group(10)))
        elif m.group(12):
            x = 0
        elif m.group(13):
            x, band = 0, band + 1
        else:
            count, char = (int(m.group(5)), m.group(6)) if m.group(5) else (1, m.group(11))
            bits = ord(char) - 63
            for _ in range(count):
                for bit in range(6):
                    if bits >> bit & 1:
                        assert selected is not None, "pixels painted before any register was selected"
                        canvas[(x, band * 6 + bit)] = registers[selected]
                x += 1
    width, height = raster
    out = np.zeros((height, width, 3), dtype=np.int32) + np.array(background)
    for (px, py), colour in canvas.items():
        assert px < width and py < height, f"pixel ({px}, {py}) outside the declared {width}×{height}"
        out[py, px] = colour
    return out, raster


def percent(picture: Image.Image) -> np.ndarray:
    rgb = np.asarray(sixel.quantize(picture).convert("RGB"), dtype=np.int32)
    return (rgb * 100 + 127) // 255


@pytest.fixture
def green_close_up() -> Image.Image:
    """Mostly green with a yellow band and thin dark shapes: the picture the old encoder spoilt."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((64, 96, 3), dtype=np.uint8)
    pixels[...] = (30, 160, 40)
    pixels[20:26, :, :] = (230, 220, 40)
    pixels[40:42, 10:80] = (20, 20, 20)
    pixels += rng.integers(0, 12, pixels.shape, dtype=np.uint8)
    return Image.fromarray(pixels)


def test_every_pixel_decodes_to_its_colour(green_close_up):
    painted, raster = decode(sixel.encode(green_close_up))
    assert raster == (96, 64)
    assert np.array_equal(painted, percent(green_close_up))


def test_each_band_selects_its_register_after_the_definitions(green_close_up):
    data = sixel.encode(green_close_up)
    body = data[data.index('"'):]
    definitions_end = max(m.end() for m in re.finditer(r"#\d+;2;\d+;\d+;\d+", body))
    assert re.match(r"#\d+[?-~!]", body[definitions_end:]), "the first pixels come right after a #N select"
    for band in body[definitions_end:].split("-"):
        for run in band.split("$"):
            assert re.match(r"#\d+(?![;\d])", run), f"a colour run without its register: {run[:20]!r}"


@pytest.mark.parametrize("size", [(192, 128), (97, 31), (5, 1), (1, 7)])
def test_the_picture_is_sent_at_its_own_size_without_padding(size):
    picture = Image.linear_gradient("L").resize(size).convert("RGB")
    painted, raster = decode(sixel.encode(picture))
    assert raster == size  # no box around it: pixels outside the picture are never written
    assert np.array_equal(painted, percent(picture))


def test_the_last_band_does_not_move_the_cursor_down():
    data = sixel.encode(Image.new("RGB", (12, 12), (255, 0, 0)))
    assert not data.endswith("-\x1b\\")
    assert data.count("-") == 1  # two bands, one band break


def test_runs_are_compressed():
    data = sixel.encode(Image.new("RGB", (300, 6), (0, 0, 255)))
    assert "!300~" in data and len(data) < 60


def test_the_strict_decoder_paints_a_defined_but_unselected_register_as_xterm_does():
    # What the old encoder wrote for a two-colour band: the second colour is defined, never selected.
    bad = '\x1bP0;1;0q"1;1;2;6#0;2;100;0;0#0~$#1;2;0;100;0?~\x1b\\'
    painted, _ = decode(bad)
    assert painted[0, 1].tolist() == [100, 0, 0]  # the wrong colour: red, not the green meant
