"""The run's sample images as a card shows them: newest step first, each with its prompt and seed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Sample:
    step: int
    path: Path
    prompt: str
    negative: str
    seed: int | None


def _read_sidecar(image: Path) -> dict[str, str]:
    try:
        text = image.with_suffix(".txt").read_text(encoding="utf-8")
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if "prompt" not in fields and text.strip():
        fields = {"prompt": text.strip().splitlines()[0]}  # a bare prompt, as older samples were written
    return fields


def step_samples(samples_dir: Path) -> list[Sample]:
    """Every sample image under ``samples_dir/step-N/``, newest step first, in prompt order within a step."""
    steps = []
    for child in samples_dir.iterdir() if samples_dir.is_dir() else []:
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            steps.append((int(match.group(1)), child))
    found = []
    for step, folder in sorted(steps, reverse=True):
        for image in sorted(folder.glob("*.png")):
            side = _read_sidecar(image)
            seed = side.get("seed", "")
            found.append(Sample(step, image, side.get("prompt", ""), side.get("negative", ""),
                                int(seed) if seed.isdigit() else None))
    return found


def newest_samples(samples_dir: Path, up_to_step: int | None = None) -> list[Sample]:
    """The samples of the newest step that has any (at most ``up_to_step``): what the LoRA draws."""
    found = [s for s in step_samples(samples_dir) if up_to_step is None or s.step <= up_to_step]
    return [s for s in found if s.step == found[0].step] if found else []
