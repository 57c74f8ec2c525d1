"""One PNG per sample prompt with its image at every step side by side: ``samples/sheet-NN-seedS.png``.

"Is it still getting better?" is answered by looking at one prompt across
steps, not at one step across prompts. The sheet is rewritten each time a
sample of that prompt arrives (an event sink on ``SampleReady``), from the
files in ``samples/step-*/``, so it is complete after a resume too. PIL only.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from loratui.events import Event, SampleReady

TILE = 256
"""Longest side of a tile: small enough that a sheet of a hundred steps stays a few MB."""
LABEL_H = 18
MAX_COLUMNS = 8
_STEP_DIR = re.compile(r"^step-(\d+)$")


def sheet_path(samples_dir: Path, image_name: str) -> Path:
    return samples_dir / f"sheet-{Path(image_name).stem}.png"


def steps_of(samples_dir: Path, image_name: str) -> list[tuple[int, Path]]:
    """(step, image) of every step that has a sample with this file name, oldest first."""
    found = []
    for child in samples_dir.iterdir() if samples_dir.is_dir() else []:
        match = _STEP_DIR.match(child.name)
        if match and (child / image_name).is_file():
            found.append((int(match.group(1)), child / image_name))
    return sorted(found)


def _prompt_of(image: Path) -> str:
    try:
        for line in image.with_suffix(".txt").read_text(encoding="utf-8").splitlines():
            if line.startswith("prompt:"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def write_contact_sheet(samples_dir: Path, image_name: str) -> Path | None:
    """Write (or rewrite) the sheet of one prompt; None when there is no image of it yet."""
    tiles = steps_of(samples_dir, image_name)
    if not tiles:
        return None
    columns = min(len(tiles), MAX_COLUMNS)
    rows = math.ceil(len(tiles) / columns)
    with Image.open(tiles[-1][1]) as newest:
        scale = TILE / max(newest.size)
        tile_w, tile_h = max(1, round(newest.width * scale)), max(1, round(newest.height * scale))
    font = ImageFont.load_default()
    header = LABEL_H
    sheet = Image.new("RGB", (columns * tile_w, header + rows * (tile_h + LABEL_H)), "white")
    draw = ImageDraw.Draw(sheet)
    prompt = _prompt_of(tiles[-1][1])
    draw.text((4, 3), prompt[: max(10, columns * tile_w // 7)], fill="black", font=font)
    for index, (step, path) in enumerate(tiles):
        x = (index % columns) * tile_w
        y = header + (index // columns) * (tile_h + LABEL_H)
        draw.text((x + 4, y + 3), f"step {step}", fill="black", font=font)
        with Image.open(path) as picture:
            sheet.paste(picture.convert("RGB").resize((tile_w, tile_h), Image.Resampling.LANCZOS),
                        (x, y + LABEL_H))
    out = sheet_path(samples_dir, image_name)
    tmp = out.with_suffix(".png.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out


class ContactSheets:
    """An event sink: each sample that arrives refreshes its prompt's sheet."""

    def __call__(self, event: Event) -> None:
        if isinstance(event, SampleReady):
            image = Path(event.path)
            write_contact_sheet(image.parent.parent, image.name)
