"""Masked loss: masks are found, checked and cropped exactly as their images are."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from loratui.cli import main
from loratui.config import CONFIG_NAME, load_config
from loratui.data.concepts import scan_project
from loratui.data.masks import ALPHA, mask_grid


def _project(root: Path, data: str) -> Path:
    (root / "images").mkdir(parents=True)
    (root / CONFIG_NAME).write_text(f'name = "m"\n[data]\nresolution = 128\n{data}\n', encoding="utf-8")
    return root


def _half_mask(size: tuple[int, int], mode: str = "L") -> Image.Image:
    w, h = size
    mask = Image.new("L", size, 0)
    mask.paste(255, (w // 2, 0, w, h))  # the right half is learned
    return mask.convert(mode) if mode != "L" else mask


def test_check_reports_missing_empty_wrong_size_and_wrong_mode_masks(tmp_path: Path, capsys) -> None:
    root = _project(tmp_path, 'masks = "masks"')
    masks = root / "masks"
    masks.mkdir()
    for i, name in enumerate(("good", "missing", "empty", "small", "cmyk")):
        Image.new("RGB", (128, 128), (40 * i, 90, 90)).save(root / "images" / f"{name}.jpg")
        (root / "images" / f"{name}.txt").write_text(name)
    _half_mask((128, 128)).save(masks / "good.png")
    Image.new("L", (128, 128), 0).save(masks / "empty.png")
    _half_mask((64, 64)).save(masks / "small.png")
    Image.new("CMYK", (128, 128)).save(masks / "cmyk.jpg")
    report = scan_project(load_config(root), root)
    by_name = {Path(r.rel).stem: r for r in report.records}
    assert by_name["good"].mask == str(masks / "good.png") and not by_name["good"].problems
    assert by_name["missing"].mask is None and "no mask" in by_name["missing"].problems[0]
    assert by_name["empty"].status == "skipped" and "all black" in by_name["empty"].problems[0]
    assert by_name["small"].mask is None and "64×64 but the image is 128×128" in by_name["small"].problems[0]
    assert by_name["cmyk"].mask is None and "mode CMYK" in by_name["cmyk"].problems[0]
    assert main(["check", str(root)]) == 1  # the all-black one is left out
    out = " ".join(capsys.readouterr().out.split())
    for phrase in ("no mask", "all black", "64×64", "mode CMYK"):
        assert phrase in out


def test_mask_is_cropped_and_flipped_with_its_image_onto_the_latent_grid(tmp_path: Path) -> None:
    mask_path = tmp_path / "m.png"
    _half_mask((256, 128)).save(mask_path)  # wide picture: right half learned
    image_path = tmp_path / "i.png"
    Image.new("RGB", (256, 128)).save(image_path)
    grid = mask_grid(image_path, str(mask_path), (128, 128), flip=False)  # centre crop of a 2:1 picture
    assert grid.shape == (1, 16, 16)
    assert torch.all(grid[:, :, :8] == 0) and torch.all(grid[:, :, 8:] == 1)
    flipped = mask_grid(image_path, str(mask_path), (128, 128), flip=True)
    assert torch.equal(flipped, grid.flip(-1))


def test_alpha_channel_masks_only_when_asked(tmp_path: Path) -> None:
    root = _project(tmp_path, "alpha_mask = true")
    rgba = Image.new("RGBA", (128, 128), (200, 10, 10, 0))
    rgba.paste((200, 10, 10, 255), (0, 0, 64, 128))  # the left half is opaque
    rgba.save(root / "images" / "cut.png")
    Image.new("RGB", (128, 128), "navy").save(root / "images" / "plain.png")
    Image.new("RGBA", (128, 128), (0, 0, 0, 0)).save(root / "images" / "clear.png")
    report = scan_project(load_config(root), root)
    by_name = {Path(r.rel).stem: r for r in report.records}
    assert by_name["cut"].mask == ALPHA
    assert by_name["plain"].mask is None and any("no alpha channel" in p for p in by_name["plain"].problems)
    assert by_name["clear"].status == "skipped"
    grid = mask_grid(root / "images" / "cut.png", ALPHA, (128, 128), flip=False)
    assert torch.all(grid[:, :, :8] == 1) and torch.all(grid[:, :, 8:] == 0)
    # Without the opt-in the same picture is trained whole.
    (root / CONFIG_NAME).write_text('name = "m"\n[data]\nresolution = 128\n')
    assert all(r.mask is None for r in scan_project(load_config(root), root).records)


def test_a_masks_folder_inside_the_images_folder_is_not_trained_on(tmp_path: Path) -> None:
    root = _project(tmp_path, 'masks = "images/masks"')
    (root / "images" / "masks").mkdir()
    Image.new("RGB", (128, 128), "olive").save(root / "images" / "a.png")
    _half_mask((128, 128)).save(root / "images" / "masks" / "a.png")
    report = scan_project(load_config(root), root)
    assert [r.rel for r in report.records] == ["a.png"] and report.records[0].mask is not None
