"""Resumable checkpoints: one directory per step, complete or absent.

A checkpoint is written under a temporary name, every file fsynced, then
renamed into place; the rename is the commit point, so a kill or a full disk
at any moment leaves either the previous set of checkpoints or the new one.
Everything is loaded back with ``weights_only=True``: our own files hold
tensors and plain containers only, never pickled objects.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_RE = re.compile(r"^step-(\d{6,})$")
STATE_FILE = "state.json"
EXTRA_FILES = ("ema", "lora_train")  # optional tensor sets beside lora.safetensors


@dataclass
class TrainState:
    step: int  # optimizer steps done
    micro_batch: int  # micro-batches consumed (the data position)
    epoch: int
    skipped_steps: int = 0
    loratui_version: str = ""
    config_digest: dict[str, Any] = field(default_factory=dict)
    saved_at: float = 0.0
    best_step: int | None = None  # the step with the lowest validation loss so far (save.keep_best)
    best_val_loss: float | None = None


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(root: Path, state: TrainState, *, lora: dict[str, torch.Tensor],
                     optimizer: dict[str, Any], scheduler: dict[str, Any], config_text: str,
                     extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write ``root/step-NNNNNN`` atomically and return its path.

    ``extra`` holds further tensor sets by name, each written as NAME.safetensors: the EMA
    (``ema``) and schedule-free's training-point weights (``lora_train``) when the run has them."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(state.step)
    tmp = root / f".tmp-{checkpoint_name(state.step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in lora.items()}, str(tmp / "lora.safetensors"))
        for name, tensors in (extra or {}).items():
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                      str(tmp / f"{name}.safetensors"))
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(scheduler, tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "config.toml").write_text(config_text, encoding="utf-8")
        # state.json last: a reader treats a directory without it as incomplete.
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
        for child in tmp.iterdir():
            _fsync_path(child)
        _fsync_path(tmp)
        if final.exists():  # re-saving the same step (e.g. stop right after an interval save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = CHECKPOINT_RE.match(child.name)
        if m and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that actually loads; damaged ones are skipped, not fatal."""
    for path in reversed(list_checkpoints(root)):
        try:
            read_state(path)
            return path
        except (OSError, ValueError, KeyError):
            continue
    return None


def read_state(path: Path) -> TrainState:
    data = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    return TrainState(**data)


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainState
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    config_text: str
    extra: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    return LoadedCheckpoint(
        path=path,
        state=read_state(path),
        lora=load_file(str(path / "lora.safetensors")),
        optimizer=torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True),
        scheduler=torch.load(path / "scheduler.pt", weights_only=True),
        rng=torch.load(path / "rng.pt", weights_only=True),
        config_text=(path / "config.toml").read_text(encoding="utf-8"),
        extra={name: load_file(str(path / f"{name}.safetensors")) for name in EXTRA_FILES
               if (path / f"{name}.safetensors").is_file()},
    )


def prune_checkpoints(root: Path, keep: int, protect: tuple[str, ...] = ()) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (and those named in ``protect``, such as
    the best one), and stale temporary ones."""
    removed = []
    for path in list_checkpoints(root)[:-keep] if keep > 0 else []:
        if path.name in protect:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for tmp in root.glob(".tmp-step-*") if root.is_dir() else []:
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid != str(os.getpid()):
            shutil.rmtree(tmp, ignore_errors=True)
    return removed


def best_checkpoint(root: Path) -> tuple[Path, TrainState] | None:
    """The checkpoint with the lowest validation loss, as the newest checkpoint records it."""
    latest = latest_checkpoint(root)
    if latest is None:
        return None
    state = read_state(latest)
    if state.best_step is None:
        return None
    return root / checkpoint_name(state.best_step), state
