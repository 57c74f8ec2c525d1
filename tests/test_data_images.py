"""Image loading: orientation, mode conversion and the failures a user must be told about."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile

from loratui.data.images import (
    ImageProblem,
    image_to_tensor,
    load_image,
    read_image_size,
    tensor_to_image,
    to_rgb,
)

torch.set_num_threads(1)

_spec = importlib.util.spec_from_file_location(
    "make_bad_corpus", Path(__file__).with_name("make_bad_corpus.py")
)
assert _spec and _spec.loader
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 24) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_loads_upright(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / f"o{orientation}.jpg"
    corpus.save_oriented_jpeg(path, orientation)
    loaded = load_image(path)
    w, h = corpus.ORIENTED_SIZE
    assert loaded.image.size == (w, h)
    assert loaded.original_size == (w, h)
    assert read_image_size(path) == (w, h)
    probes = {
        "top_left": (w // 4, h // 4),
        "top_right": (3 * w // 4, h // 4),
        "bottom_left": (w // 4, 3 * h // 4),
        "bottom_right": (3 * w // 4, 3 * h // 4),
    }
    for quadrant, xy in probes.items():
        got = loaded.image.getpixel(xy)
        assert _close(got, corpus.QUADRANTS[quadrant]), (orientation, quadrant, got)
    assert (loaded.orientation_note is None) == (orientation == 1)


def test_stored_sideways_file_really_is_sideways(tmp_path: Path) -> None:
    """Guard against a corpus that fools itself: without EXIF handling,
    orientation 6 reads as a 64×96 picture."""
    path = tmp_path / "o6.jpg"
    corpus.save_oriented_jpeg(path, 6)
    assert Image.open(path).size == (64, 96)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_become_white(mode: str) -> None:
    if mode == "P":
        im = Image.new("P", (8, 8), 0)
        im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        im.putpixel((4, 4), 1)
        im.info["transparency"] = 0
        opaque = (255, 0, 0)
    elif mode == "LA":
        im = Image.new("LA", (8, 8), (0, 0))
        im.putpixel((4, 4), (50, 255))
        opaque = (50, 50, 50)
    else:
        im = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
        im.putpixel((4, 4), (10, 20, 30, 255))
        opaque = (10, 20, 30)
    notes: list[str] = []
    rgb = to_rgb(im, notes)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((4, 4)) == opaque
    assert any("white" in n for n in notes)


def test_half_transparent_pixel_blends_towards_white() -> None:
    im = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert _close(to_rgb(im).getpixel((0, 0)), (127, 127, 127), tol=2)


def test_sixteen_bit_values_keep_their_top_byte() -> None:
    im = corpus.sixteen_bit_gradient((256, 2))
    notes: list[str] = []
    rgb = to_rgb(im, notes)
    assert [rgb.getpixel((x, 1))[0] for x in (0, 64, 128, 255)] == [0, 64, 128, 255]
    assert "16-bit" in notes[0]


def test_sixteen_bit_big_endian_is_read_the_right_way_round() -> None:
    # 0x1234 stored big-endian must give 0x12, not 0x34.
    im = Image.frombytes("I;16B", (1, 1), bytes([0x12, 0x34]))
    assert to_rgb(im).getpixel((0, 0)) == (0x12, 0x12, 0x12)


def test_wide_modes_are_scaled_by_their_range() -> None:
    as_16_bit = Image.new("I", (2, 1))
    as_16_bit.putpixel((0, 0), 0)
    as_16_bit.putpixel((1, 0), 65535)
    assert [to_rgb(as_16_bit).getpixel((x, 0))[0] for x in (0, 1)] == [0, 255]
    unit_float = Image.new("F", (2, 1))
    unit_float.putpixel((0, 0), 0.0)
    unit_float.putpixel((1, 0), 0.5)
    assert [to_rgb(unit_float).getpixel((x, 0))[0] for x in (0, 1)] == [0, 128]
    signed = Image.new("I", (2, 1))
    signed.putpixel((0, 0), -1000)
    signed.putpixel((1, 0), 1000)
    assert [to_rgb(signed).getpixel((x, 0))[0] for x in (0, 1)] == [0, 255]


def test_cmyk_cyan_becomes_rgb_cyan(tmp_path: Path) -> None:
    path = tmp_path / "cyan.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(path, quality=95)
    loaded = load_image(path)
    assert loaded.original_mode == "CMYK"
    assert _close(loaded.image.getpixel((8, 8)), (0, 255, 255), tol=12)
    assert "CMYK" in loaded.notes[0]


def test_animated_webp_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "a.webp"
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    loaded = load_image(path)
    assert _close(loaded.image.getpixel((8, 8)), (255, 0, 0), tol=4)
    assert "first frame" in loaded.notes[0]


def _problem(path: Path) -> str:
    with pytest.raises(ImageProblem) as info:
        load_image(path)
    assert info.value.path == path
    return info.value.reason


def test_unusable_files_raise_a_sentence_not_a_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "empty file" in _problem(empty)

    text = tmp_path / "text.png"
    text.write_text("hello")
    assert "not an image" in _problem(text)

    whole = tmp_path / "whole.jpg"
    corpus.noise_picture((128, 128)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:-400])
    assert _problem(cut).startswith("truncated JPEG")

    broken = tmp_path / "broken.jpg"
    broken.symlink_to(tmp_path / "nowhere.jpg")
    assert "broken symlink" in _problem(broken)

    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    assert "symlink loop" in _problem(loop)


def test_decompression_bomb_is_refused_with_its_pixel_count(tmp_path: Path) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(corpus.bomb_png(20_000, 20_000))
    reason = _problem(bomb)
    assert "400,000,000 pixels" in reason
    # The global guard is left alone, and so are warning filters.
    assert Image.MAX_IMAGE_PIXELS == limit
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert not any(f[2] is Image.DecompressionBombWarning for f in warnings.filters)


def test_permission_denied_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 000 does not stop root, so the denial is simulated at open().
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(path)

    def deny(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("loratui.data.images.open", deny, raising=False)
    assert "permission denied" in _problem(path)


def test_tensor_is_chw_in_minus_one_to_one_and_round_trips() -> None:
    im = Image.new("RGB", (3, 2), (0, 0, 0))
    im.putpixel((2, 1), (255, 128, 0))
    t = image_to_tensor(im)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert t[0, 1, 2].item() == 1.0 and abs(t[1, 1, 2].item() - (128 / 127.5 - 1)) < 1e-6
    assert tensor_to_image(t).tobytes() == im.tobytes()


def test_srgb_tagged_image_is_left_alone(tmp_path: Path) -> None:
    from PIL import ImageCms

    path = tmp_path / "srgb.png"
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(path, icc_profile=profile)
    loaded = load_image(path)
    assert loaded.notes == [] and loaded.image.getpixel((1, 1)) == (10, 200, 30)


def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert "not a regular file" in _problem(fifo)
