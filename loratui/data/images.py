"""Loading training images so that every one arrives as correct 8-bit sRGB-ish RGB.

Plain ``Image.open(p).convert("RGB")`` is what most trainers do, and it is
wrong in several quiet ways: EXIF rotation is ignored (phone photos train
sideways), transparent pixels turn black, 16-bit greyscale clips to white,
and a truncated JPEG decodes as grey garbage only if the global
``LOAD_TRUNCATED_IMAGES`` switch is on.  Everything here fixes one of those,
and every fix leaves a note so the dataset report can say what was done.

torch and numpy are imported inside the functions that need them: the wizard
scans a folder before torch is loaded.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import threading
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# Image formats people commonly drop into a dataset folder that we do not
# train on; the scan names them instead of silently ignoring them.
UNSUPPORTED_IMAGE_EXTENSIONS = (
    ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".svg", ".psd",
)

EXIF_ORIENTATION_TAG = 0x0112

# What each EXIF orientation value asks the viewer to do, for notes.
_ORIENTATION_WORDS = {
    2: "mirrored",
    3: "rotated 180°",
    4: "flipped vertically",
    5: "transposed",
    6: "rotated 90° clockwise",
    7: "transversed",
    8: "rotated 90° counter-clockwise",
}

_WHITE = (255, 255, 255)


class ImageProblem(Exception):
    """An image that cannot be used; ``str()`` is a sentence a user can act on."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class LoadedImage:
    image: Image.Image  # always mode "RGB"
    original_mode: str
    notes: list[str] = field(default_factory=list)  # conversions, one sentence each
    exif_orientation: int = 1  # 1 means none was applied
    format: str | None = None  # Pillow's format name: "JPEG", "PNG", …
    original_size: tuple[int, int] = (0, 0)  # (w, h) after EXIF orientation

    @property
    def orientation_note(self) -> str | None:
        words = _ORIENTATION_WORDS.get(self.exif_orientation)
        if words is None:
            return None
        return f"{words} per its EXIF orientation ({self.exif_orientation})"


def check_readable_file(path: Path) -> None:
    """Raise ImageProblem for anything that is not a readable, non-empty file.

    Done with stat calls before Pillow sees the path, so a broken symlink or
    a symlink loop gets its own message rather than a confusing OSError.
    """
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        raise ImageProblem(path, "file not found (moved or deleted since it was listed); skipped") from None
    except OSError as exc:
        raise ImageProblem(path, f"cannot access it ({exc.strerror}); skipped") from None
    if stat.S_ISLNK(lst.st_mode):
        try:
            os.stat(path)
        except FileNotFoundError:
            target = os.readlink(path)
            raise ImageProblem(
                path, f"broken symlink: it points to {target}, which does not exist; skipped"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ImageProblem(
                    path, "symlink loop: the link never reaches a real file; skipped"
                ) from None
            raise ImageProblem(path, f"cannot follow symlink ({exc.strerror}); skipped") from None
    try:
        st = os.stat(path)
    except OSError as exc:  # e.g. a folder on the way that may not be searched
        raise ImageProblem(path, f"cannot access it ({exc.strerror}); skipped") from None
    # Not only tidiness: opening a FIFO that happens to end in .png would block.
    if not stat.S_ISREG(st.st_mode):
        raise ImageProblem(path, "not a regular file; skipped")
    if st.st_size == 0:
        raise ImageProblem(path, "empty file (0 bytes), probably an interrupted copy; skipped")


_PERMISSION_DENIED = "permission denied: loratui cannot read it (try chmod a+r); skipped"


def read_file_bytes(path: Path) -> bytes:
    """The file's bytes, with filesystem failures turned into ImageProblem."""
    check_readable_file(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError:
        raise ImageProblem(path, _PERMISSION_DENIED) from None
    except OSError as exc:
        raise ImageProblem(path, f"cannot read it ({exc.strerror}); skipped") from None


_WARNINGS_LOCK = threading.Lock()
_PIXELS_IN_MESSAGE = re.compile(r"\((\d+) pixels\)")


def _bomb_problem(path: Path, exc: Exception) -> ImageProblem:
    match = _PIXELS_IN_MESSAGE.search(str(exc))
    size = f"{int(match.group(1)):,} pixels" if match else "too many pixels"
    limit = Image.MAX_IMAGE_PIXELS or 0
    return ImageProblem(
        path,
        f"too large: {size}, above Pillow's safety limit of {limit:,}; "
        "not decoded (scale it down to a few thousand pixels on the long side); skipped",
    )


def _open(path: Path, data: bytes | BinaryIO) -> Image.Image:
    """Image.open with every way of failing turned into a sentence.

    The decompression-bomb warning is raised as an error only inside this
    call; the global limit and global warning filters stay as they are.
    """
    try:
        # catch_warnings swaps the process-wide filter list; the lock keeps two
        # scanning threads from restoring each other's copy.  Only the header
        # parse is inside it, not the decode.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_problem(path, exc) from None
    except UnidentifiedImageError:
        raise ImageProblem(path, _not_an_image_reason(path, data)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        detail = str(exc).rstrip(".") or type(exc).__name__
        kind = "truncated" if "truncat" in detail.lower() else "corrupt"
        fmt = path.suffix.lstrip(".").upper() or "image"
        raise ImageProblem(path, f"{kind} {fmt}: cannot read its header ({detail}); skipped") from None


def _not_an_image_reason(path: Path, data: bytes | BinaryIO) -> str:
    if isinstance(data, bytes):
        head = data[:512]
    else:
        data.seek(0)
        head = data.read(512)
    looks_textual = head and all(b in b"\t\n\r" or 32 <= b < 127 or b >= 128 for b in head)
    kind = "a text file" if looks_textual and b"\x00" not in head else "not an image Pillow can read"
    return f"not an image: the {path.suffix or 'file'} name hides {kind}; skipped"


def _decode(path: Path, im: Image.Image) -> None:
    """Force a full decode so that truncated or corrupt data is found now."""
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        fmt = im.format or path.suffix.lstrip(".").upper() or "image"
        detail = str(exc).rstrip(".") or type(exc).__name__
        kind = "truncated" if "truncat" in detail.lower() else "corrupt"
        raise ImageProblem(path, f"{kind} {fmt}: cannot be decoded ({detail}); skipped") from None


def load_image(
    path: Path | str, *, data: bytes | None = None, check_only: bool = False
) -> LoadedImage:
    """Decode ``path`` fully and return it as RGB with notes on every conversion.

    ``data`` lets a caller that already read the bytes (to hash them) avoid a
    second read.  ``check_only`` lets JPEG decode at 1/8 scale: every byte is
    still entropy-decoded, so truncation is still found, at a fraction of the
    cost; the returned picture is then small but ``original_size`` is not.
    Raises ImageProblem for anything that cannot be trained on.
    """
    path = Path(path)
    if data is None:
        data = read_file_bytes(path)
    elif not data:
        raise ImageProblem(path, "empty file (0 bytes), probably an interrupted copy; skipped")
    im = _open(path, data)
    notes: list[str] = []
    fmt = im.format
    full_w, full_h = im.size
    frames = getattr(im, "n_frames", 1)
    if getattr(im, "is_animated", False) and frames > 1:
        im.seek(0)
        notes.append(f"animated ({frames} frames); only the first frame is used")
    if check_only and fmt == "JPEG":
        im.draft(im.mode, (max(1, full_w // 8), max(1, full_h // 8)))
    _decode(path, im)
    original_mode = im.mode
    orientation = _exif_orientation(im)
    try:
        rotated = ImageOps.exif_transpose(im)
    except Exception as exc:  # a malformed EXIF block should not cost the image
        notes.append(f"EXIF data unreadable ({exc}); orientation left as stored")
        rotated, orientation = im, 1
    if orientation not in _ORIENTATION_WORDS:
        orientation = 1
    rgb = to_rgb(rotated, notes)
    size = (full_h, full_w) if orientation in (5, 6, 7, 8) else (full_w, full_h)
    return LoadedImage(
        image=rgb,
        original_mode=original_mode,
        notes=notes,
        exif_orientation=orientation,
        format=fmt,
        original_size=size,
    )


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
        return int(value)
    except Exception:
        return 1


def read_image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) as the image will be trained, i.e. after EXIF orientation.

    Reads the header only for JPEG and WebP.  PNG keeps EXIF in a chunk that
    may follow the pixel data, so Pillow may decode to find it.
    """
    path = Path(path)
    check_readable_file(path)
    try:
        with open(path, "rb") as f:
            im = _open(path, f)
            w, h = im.size
            if _exif_orientation(im) in (5, 6, 7, 8):
                w, h = h, w
            return w, h
    except PermissionError:
        raise ImageProblem(path, _PERMISSION_DENIED) from None


# ---------------------------------------------------------------------------
# Mode conversion


def to_rgb(im: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """Convert any Pillow mode to RGB the way a viewer would show it.

    Appends a sentence to ``notes`` for each conversion that changes how the
    picture could look (plain RGB and JPEG YCbCr add nothing).
    """
    if notes is None:
        notes = []
    mode = im.mode
    if mode == "RGB":
        return _apply_icc(im, notes)
    if mode == "CMYK":
        return _cmyk_to_rgb(im, notes)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        if has_alpha:
            return _flatten_alpha(im.convert("RGBA"), notes, f"palette ({mode})")
        notes.append("palette image (P) converted to RGB")
        return im.convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La"):
        return _flatten_alpha(im.convert("RGBA"), notes, mode)
    if mode == "RGBX":
        return im.convert("RGB")
    if mode in ("L", "1"):
        if "transparency" in im.info:
            return _flatten_alpha(im.convert("RGBA"), notes, mode)
        notes.append(f"greyscale ({mode}); trained as grey RGB")
        return im.convert("RGB")
    if mode.startswith("I;16"):
        notes.append(f"16-bit greyscale ({mode}) scaled to 8 bits and trained as grey RGB")
        return _sixteen_bit_to_rgb(im)
    if mode in ("I", "F"):
        return _wide_to_rgb(im, notes)
    if mode in ("YCbCr", "LAB", "HSV"):
        notes.append(f"converted from {mode} to RGB")
        return im.convert("RGB")
    try:
        converted = im.convert("RGB")
    except ValueError:
        raise ImageProblem(
            Path(getattr(im, "filename", "") or "image"),
            f"unsupported pixel mode {mode}; save it as an 8-bit RGB PNG or JPEG; skipped",
        ) from None
    notes.append(f"converted from {mode} to RGB")
    return converted


def _flatten_alpha(rgba: Image.Image, notes: list[str], described: str) -> Image.Image:
    """Composite on white: a transparent background is usually meant as paper,
    and black (what a bare convert("RGB") gives for P/RGBA) teaches dark halos."""
    alpha_min, _ = rgba.getchannel("A").getextrema()
    if alpha_min == 255:
        notes.append(f"{described} image has an alpha channel but no transparency; alpha dropped")
        return rgba.convert("RGB")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    background.alpha_composite(rgba)
    notes.append(f"{described} image has transparency; composited on white")
    return background.convert("RGB")


def _cmyk_to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        converted = _icc_to_srgb(im, icc, "RGB")
        if converted is not None:
            notes.append("converted from CMYK to RGB using its embedded colour profile")
            return converted
    # Pillow's own CMYK->RGB is the standard (1-C)(1-K) formula, and its JPEG
    # reader already undoes Adobe's inverted CMYK; good enough without a profile.
    notes.append("converted from CMYK to RGB (no usable colour profile; colours approximate)")
    return im.convert("RGB")


def _apply_icc(im: Image.Image, notes: list[str]) -> Image.Image:
    """Bring an RGB image with a wide-gamut profile (Adobe RGB, Display P3) to sRGB.

    Untagged and sRGB-tagged images come back unchanged.
    """
    icc = im.info.get("icc_profile")
    if not icc:
        return im
    description = _icc_description(icc)
    if description is None or "srgb" in description.lower():
        return im
    converted = _icc_to_srgb(im, icc, "RGB")
    if converted is None:
        return im
    notes.append(f"converted from its {description} colour profile to sRGB")
    return converted


def _icc_description(icc: bytes) -> str | None:
    try:
        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return (ImageCms.getProfileDescription(profile) or "").strip() or None
    except Exception:
        return None


def _icc_to_srgb(im: Image.Image, icc: bytes, out_mode: str) -> Image.Image | None:
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        target = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, source, target, outputMode=out_mode)
    except Exception:
        # A broken or unsupported profile: fall back to Pillow's conversion.
        return None


def _sixteen_bit_to_rgb(im: Image.Image) -> Image.Image:
    import numpy as np

    # np.asarray honours the byte order of I;16B / I;16L.  Keep the top byte:
    # a plain convert("L") clips everything above 255 to white.
    values = np.asarray(im).astype(np.uint16, copy=False)
    eight = (values >> 8).astype(np.uint8)
    return Image.fromarray(eight, "L").convert("RGB")


def _wide_to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """Mode I (32-bit int) and F (float): pick a scale from the value range."""
    import numpy as np

    values = np.asarray(im).astype(np.float64)
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    if im.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled, how = values * 255.0, "float 0–1 values scaled to 0–255"
    elif low >= 0 and high <= 255:
        scaled, how = values, "values already within 0–255"
    elif low >= 0 and high <= 65535:
        # Pillow opens many 16-bit files as mode I; treat them as 16-bit.
        scaled, how = values / 257.0, "16-bit values scaled to 8 bits"
    else:
        span = high - low if high > low else 1.0
        scaled, how = (values - low) * (255.0 / span), f"values {low:g}…{high:g} stretched to 0–255"
    eight = np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
    notes.append(f"{'32-bit integer' if im.mode == 'I' else 'floating-point'} ({im.mode}) image: {how}")
    return Image.fromarray(eight, "L").convert("RGB")


# ---------------------------------------------------------------------------
# Tensors


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image → float32 tensor [3, H, W] in [-1, 1], as the VAE expects."""
    import torch

    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    # bytearray gives frombuffer a writable buffer, so no copy warning.
    flat = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    hwc = flat.view(h, w, 3)
    return hwc.permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0).contiguous()


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """The inverse of image_to_tensor, for sample images: [3, H, W] in [-1, 1]."""
    import torch

    t = t.detach().to("cpu", torch.float32)
    if t.dim() == 4:
        t = t[0]
    hwc = ((t.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    h, w, _ = hwc.shape
    return Image.frombytes("RGB", (w, h), hwc.numpy().tobytes())
