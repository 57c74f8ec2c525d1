"""VAE latents and text-encoder outputs, computed once and kept under ``.cache/``.

Each entry's file name is a hash of everything it depends on (image bytes,
bucket, flip, model, caption, clip skip), so a second run reuses all of
them and changing one image or caption recomputes only that entry. The VAE
posterior's mean and std are stored rather than one sample, so every epoch
still draws a fresh latent, as training without a cache would.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

CACHE_FORMAT = "1"


@dataclass
class CachedLatent:
    mean: torch.Tensor  # [4, h, w], already multiplied by the VAE scaling factor
    std: torch.Tensor
    original_size: tuple[int, int]  # (h, w) before resize, for SDXL micro-conditioning
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]


@dataclass
class CachedText:
    hidden: torch.Tensor  # [77, D]
    pooled: torch.Tensor | None  # [P] for SDXL


def _key(*parts: object) -> str:
    h = hashlib.sha256(CACHE_FORMAT.encode())
    for part in parts:
        h.update(b"\x00")
        h.update(str(part).encode())
    return h.hexdigest()[:40]


def _save_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    # One read of the whole (small) file, then the header parsed from the same bytes: a warm start
    # reads one entry per image, and opening each file twice (metadata, then tensors) cost half again.
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        path.unlink(missing_ok=True)
        return None
    try:
        size = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + size]).get("__metadata__") or {}
        return load(data), meta
    except (SafetensorError, ValueError, AttributeError):
        path.unlink(missing_ok=True)  # a damaged cache entry is just recomputed
        return None


class LatentCache:
    def __init__(self, root: Path, model_fingerprint: str) -> None:
        self.root = Path(root) / "latents"
        self.model_fingerprint = model_fingerprint
        self.hits = 0
        self.misses = 0

    def key(self, image_sha256: str, bucket: tuple[int, int], flip: bool) -> str:
        return _key("latent", image_sha256, bucket, flip, self.model_fingerprint)

    def get_or_compute(self, image_sha256: str, bucket: tuple[int, int], flip: bool,
                       compute: Callable[[], CachedLatent]) -> CachedLatent:
        path = self.root / f"{self.key(image_sha256, bucket, flip)}.safetensors"
        loaded = _load(path)
        if loaded is not None:
            tensors, meta = loaded
            self.hits += 1
            return CachedLatent(tensors["mean"], tensors["std"], _pair(meta["original_size"]),
                                _pair(meta["crop_top_left"]), _pair(meta["target_size"]))
        value = compute()
        self.misses += 1
        _save_atomic(path, {"mean": value.mean, "std": value.std}, {
            "original_size": _unpair(value.original_size),
            "crop_top_left": _unpair(value.crop_top_left),
            "target_size": _unpair(value.target_size),
        })
        return value


class TextCache:
    """Text-encoder outputs by caption string; memory first, then disk."""

    def __init__(self, root: Path, model_fingerprint: str, clip_skip: int) -> None:
        self.root = Path(root) / "text"
        self.model_fingerprint = model_fingerprint
        self.clip_skip = clip_skip
        self._memory: dict[str, CachedText] = {}
        self.hits = 0
        self.misses = 0

    def get_many(self, captions: list[str], compute: Callable[[list[str]], list[CachedText]]) -> list[CachedText]:
        missing = [c for c in dict.fromkeys(captions) if c not in self._memory and not self._load_disk(c)]
        if missing:
            for caption, value in zip(missing, compute(missing)):
                self._memory[caption] = value
                tensors = {"hidden": value.hidden}
                if value.pooled is not None:
                    tensors["pooled"] = value.pooled
                _save_atomic(self._path(caption), tensors, {})
            self.misses += len(missing)
        self.hits += len(captions) - len(missing)
        return [self._memory[c] for c in captions]

    def _path(self, caption: str) -> Path:
        return self.root / f"{_key('text', caption, self.clip_skip, self.model_fingerprint)}.safetensors"

    def _load_disk(self, caption: str) -> bool:
        loaded = _load(self._path(caption))
        if loaded is None:
            return False
        tensors, _ = loaded
        self._memory[caption] = CachedText(tensors["hidden"], tensors.get("pooled"))
        return True


def _unpair(p: tuple[int, int]) -> str:
    return f"{int(p[0])},{int(p[1])}"


def _pair(s: str) -> tuple[int, int]:
    a, b = s.split(",")
    return int(a), int(b)
