"""The folder scan: repeats, epochs, captions, buckets and the report built on it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from loratui.data.report import problem_lines, summary_line
from loratui.data.scan import repeats_for, scan_images


def _img(path: Path, size: tuple[int, int] = (512, 512), colour: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (colour, 100, 150)).save(path)
    return path


def test_repeats_come_from_the_nearest_n_name_folder() -> None:
    assert repeats_for("a.png") == (1, None)
    assert repeats_for("10_me/a.png") == (10, None)
    assert repeats_for("10_me/3_closeups/a.png") == (3, None)
    assert repeats_for("10_me/extra/a.png") == (10, None)
    assert repeats_for("10_me.png") == (1, None)  # a file name is not a folder
    assert repeats_for("me_10/a.png") == (1, None)
    n, notice = repeats_for("0_off/a.png")
    assert n == 1 and notice and "0_off" in notice


def test_epoch_counts_and_steps_with_buckets_never_mixed(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i in range(3):
        _img(images / "5_square" / f"s{i}.png", (600, 600), i)
    for i in range(2):
        _img(images / f"wide{i}.png", (1200, 700), 10 + i)
    _img(images / "2_tall" / "deeper" / "t.png", (500, 1000), 20)
    report = scan_images(images, resolution=512)

    assert [r.rel for r in report.records] == [
        "2_tall/deeper/t.png", "5_square/s0.png", "5_square/s1.png", "5_square/s2.png",
        "wide0.png", "wide1.png",
    ]
    assert report.images_per_epoch == 3 * 5 + 2 + 2
    # 1:2 sits nearer 320×704 (0.45) than 384×640 (0.6) on a log scale.
    assert report.bucket_histogram == {(320, 704): 2, (512, 512): 15, (640, 384): 2}
    assert report.steps_per_epoch(1) == 19
    # ceil(2/4) + ceil(15/4) + ceil(2/4): a half-full batch per bucket, never shared.
    assert report.steps_per_epoch(4) == 1 + 4 + 1
    assert report.steps_per_epoch(16) == 3
    assert report.exit_code == 0
    assert "19 steps/epoch at batch size 1" in summary_line(report)


def test_missing_and_empty_folders_are_errors_not_exceptions(tmp_path: Path) -> None:
    missing = scan_images(tmp_path / "nope", resolution=512)
    assert missing.error and "does not exist" in missing.error and missing.exit_code == 2
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    empty = scan_images(tmp_path / "empty", resolution=512)
    assert empty.error and "no images found" in empty.error and empty.exit_code == 2
    file_instead = _img(tmp_path / "one.png")
    assert "not a folder" in (scan_images(file_instead, resolution=512).error or "")
    assert problem_lines(missing)[-1].startswith("error: images folder")


def test_nothing_usable_exits_two_some_skipped_exits_one(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "bad.png").write_text("not a picture")
    assert scan_images(images, resolution=512).exit_code == 2
    _img(images / "good.png")
    report = scan_images(images, resolution=512)
    assert report.exit_code == 1
    assert problem_lines(report)[-1] == "verdict: Trainable: the skipped images are left out."


def test_caption_messages_depend_on_the_trigger_word(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _img(images / "a.jpg")
    with_trigger = scan_images(images, resolution=512, trigger_word="sks").records[0]
    assert with_trigger.problems == [
        "no caption file (images/a.jpg → expected images/a.txt); the trigger word alone will be used"
    ]
    without = scan_images(images, resolution=512).records[0]
    assert "empty caption" in without.problems[0]
    (images / "a.txt").write_text("a photo\n")
    record = scan_images(images, resolution=512).records[0]
    assert record.problems == [] and record.caption == "a photo"
    assert record.caption_path == images / "a.txt"


def test_token_count_uses_the_supplied_tokenizer_on_the_trained_caption(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _img(images / "a.png")
    (images / "a.txt").write_text("one two")
    seen: list[str] = []

    def tokenize(text: str) -> int:
        seen.append(text)
        return 80

    record = scan_images(images, resolution=512, trigger_word="sks", tokenize=tokenize).records[0]
    assert seen == ["sks, one two"]
    assert record.problems == ["caption is 80 tokens; CLIP reads 75, the rest will be truncated"]


def test_two_images_sharing_one_caption_are_named(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _img(images / "a.png", colour=1)
    _img(images / "a.jpg", colour=2)
    (images / "a.txt").write_text("x")
    records = scan_images(images, resolution=512).records
    assert all(any("shares its caption a.txt" in p for p in r.problems) for r in records)


def test_hidden_entries_and_folder_links_are_not_walked(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _img(images / "a.png")
    _img(images / ".thumbs" / "b.png")
    _img(images / ".c.png")
    outside = tmp_path / "elsewhere"
    _img(outside / "d.png")
    (images / "linked").symlink_to(outside)
    report = scan_images(images, resolution=512)
    assert [r.rel for r in report.records] == ["a.png"]
    assert any("folder symlink" in n and "not followed" in n for n in report.notices)


def test_progress_and_hashes(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i in range(3):
        _img(images / f"{i}.png", colour=i)
    calls: list[tuple[int, int]] = []
    report = scan_images(images, resolution=512, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert len({r.sha256 for r in report.records}) == 3
    import hashlib

    first = report.records[0]
    assert first.sha256 == hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert first.fingerprint.startswith(f"{first.path.stat().st_size}-")


def test_problem_lines_name_each_file_from_the_project(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _img(images / "3_x" / "big.png", (1024, 1024))
    _img(images / "small.png", (40, 40))
    lines = problem_lines(scan_images(images, resolution=512), tmp_path)
    assert lines[0] == "dataset: images at 512 px"
    assert "2 images, 2 usable, 0 skipped, 4 images/epoch" in lines[1]
    small = [line for line in lines if line.startswith("images/small.png: ok: ")]
    assert any("too small: 40×40 is far below the 512 px resolution" in line for line in small)
    assert "bucket: 512×512 (1:1) 4 images/epoch" in lines


def test_summary_line_method_for_logs(tmp_path: Path) -> None:
    assert "does not exist" in scan_images(tmp_path / "gone", resolution=512).summary_line()
    _img(tmp_path / "images" / "a.png")
    assert scan_images(tmp_path / "images", resolution=512).summary_line().startswith("1 image, 1 usable")
