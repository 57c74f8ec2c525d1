"""safetensors bytes on disk: kohya's hashes, atomic writes, and a header check before anything is read."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from loratui.errors import UserError


def safetensors_hashes(data: bytes) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of serialised safetensors bytes, as kohya and A1111 compute them."""
    header_len = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_len :]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write next to the target, fsync, rename over it: a crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (its directory entry on the disk)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems refuse to fsync a directory; the data itself is synced
    finally:
        os.close(dir_fd)


_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


class LoRAFileError(UserError, ValueError):
    """A LoRA file that cannot be read; the message names the file and what to do."""


def read_validated_bytes(path: Path) -> bytes:
    """The file's bytes after checking the safetensors header, before any tensor is allocated."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise LoRAFileError(f"cannot read LoRA file {path}: {exc.strerror}") from exc
    broken = f"LoRA file {path} is truncated or corrupt"
    hint = "; copy or download it again"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LoRAFileError(f"{broken} ({size} bytes, not a safetensors file){hint}")
        n = int.from_bytes(head, "little")
        if n > _HEADER_LIMIT or 8 + n > size:
            raise LoRAFileError(f"{broken}: header claims {n} bytes but the file has {size}{hint}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LoRAFileError(f"{broken}: the safetensors header is not valid JSON ({exc}){hint}") from exc
        if not isinstance(header, dict):
            raise LoRAFileError(f"{broken}: the safetensors header is not a JSON object{hint}")
        data_len = size - 8 - n
        for key, info in header.items():
            if key == "__metadata__":
                continue
            try:
                start, end = (int(v) for v in info["data_offsets"])
                numel = 1
                for dim in info["shape"]:
                    numel *= int(dim)
                itemsize = _DTYPE_SIZES.get(info["dtype"])
            except (KeyError, TypeError, ValueError) as exc:
                raise LoRAFileError(f"{broken}: bad header entry for tensor {key!r}{hint}") from exc
            if not 0 <= start <= end <= data_len:
                raise LoRAFileError(f"{broken}: tensor {key!r} lies beyond the end of the file{hint}")
            if itemsize is not None and (end - start) != numel * itemsize:
                raise LoRAFileError(f"{broken}: tensor {key!r} has {end - start} bytes for shape {info['shape']}{hint}")
        f.seek(0)
        return f.read()
