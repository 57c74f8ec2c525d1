"""The contact sheet: one tile per step for each prompt, labelled, rewritten as samples arrive."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from loratui.engine.contact_sheet import LABEL_H, TILE, ContactSheets, sheet_path, write_contact_sheet
from loratui.events import SampleReady

COLOURS = {100: (255, 0, 0), 200: (0, 255, 0), 300: (0, 0, 255)}


def _sample(samples: Path, step: int, name: str, colour: tuple[int, int, int]) -> Path:
    folder = samples / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.new("RGB", (64, 64), colour).save(path)
    path.with_suffix(".txt").write_text("prompt: zxc toy, red ball\nseed: 1\n", encoding="utf-8")
    return path


def test_one_tile_per_step_in_step_order_with_labels(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    sheets = ContactSheets()
    for step in (300, 100, 200):  # arrival order does not matter; the sheet is in step order
        path = _sample(samples, step, "00-seed1.png", COLOURS[step])
        _sample(samples, step, "01-seed2.png", (0, 0, 0))
        sheets(SampleReady(step=step, path=str(path), prompt="zxc toy, red ball", seed=1))
    sheet = Image.open(sheet_path(samples, "00-seed1.png")).convert("RGB")
    assert sheet.size == (3 * TILE, LABEL_H + TILE + LABEL_H)
    for column, step in enumerate((100, 200, 300)):
        centre = (column * TILE + TILE // 2, LABEL_H + LABEL_H + TILE // 2)
        assert sheet.getpixel(centre) == COLOURS[step], step
        label = sheet.crop((column * TILE, LABEL_H, (column + 1) * TILE, 2 * LABEL_H))
        assert label.getextrema() != ((255, 255), (255, 255), (255, 255)), "no step label drawn"
    # The other prompt got no sheet: only samples that arrived write one.
    assert not sheet_path(samples, "01-seed2.png").exists()


def test_many_steps_wrap_into_rows(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    for step in range(1, 11):
        _sample(samples, step * 10, "00-seed1.png", (step * 20, 0, 0))
    out = write_contact_sheet(samples, "00-seed1.png")
    assert out is not None
    with Image.open(out) as sheet:
        assert sheet.size == (8 * TILE, LABEL_H + 2 * (TILE + LABEL_H))
    assert write_contact_sheet(samples, "07-seed9.png") is None
