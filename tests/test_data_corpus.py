"""Scan a folder of deliberately broken inputs and check each one is handled as
promised: converted correctly, skipped with a sentence naming the problem, or
ignored; and that the folder is left exactly as it was."""

from __future__ import annotations

import hashlib
import io
import importlib.util
import os
import stat
from pathlib import Path

import pytest

from loratui.data.report import display_name, problem_lines, render_report
from loratui.data.scan import ScanReport, scan_images

_spec = importlib.util.spec_from_file_location(
    "make_bad_corpus", Path(__file__).with_name("make_bad_corpus.py")
)
assert _spec and _spec.loader
make_bad_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_bad_corpus)

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _tree_state(root: Path) -> dict[str, tuple]:
    """Everything scanning could change: names, types, modes, sizes, times, bytes."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            digest = ""
            if stat.S_ISLNK(st.st_mode):
                digest = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                try:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                except PermissionError:
                    digest = "unreadable"
            state[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return state


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], ScanReport, dict, dict]:
    images = tmp_path_factory.mktemp("corpus") / "images"
    expected = make_bad_corpus.make_corpus(images)
    before = _tree_state(images)
    report = scan_images(images, resolution=512, trigger_word="sks")
    after = _tree_state(images)
    return images, expected, report, before, after


def _what_scan_said(report: ScanReport, name: str) -> tuple[str, str]:
    """(handling, text) for one corpus entry, in the corpus map's vocabulary."""
    for record in report.records:
        if record.rel == name:
            return record.status, " | ".join(record.problems + record.info)
    for notice in report.notices:
        if notice.startswith(f"{name}:") or name in notice:
            return "notice", notice
    return "ignored", ""


def test_every_corpus_file_is_handled_as_expected(corpus) -> None:
    _, expected, report, _, _ = corpus
    rows = []
    failures = []
    for name, handling in expected.items():
        want_status, _, phrase = handling.partition(":")
        phrase = phrase.strip()
        status, said = _what_scan_said(report, name)
        ok = status == want_status and phrase.lower() in said.lower()
        rows.append((display_name(name), status, display_name(said) or "(not listed)", "" if ok else "  <-- MISMATCH"))
        if not ok:
            failures.append(f"{display_name(name)}: expected {handling!r}, got {status!r}: {said!r}")
    width = max(len(r[0]) for r in rows)
    print("\nCorpus handling (file -> status: what the scan said):")
    for name, status, said, flag in rows:
        print(f"  {name:<{width}}  {status:<9} {said}{flag}")
    if AS_ROOT:
        print("  note: running as root, so chmod 000 cannot make unreadable.jpg unreadable; "
              "the permission-denied path was not exercised here")
    print("\nReport as `loratui check` prints it to a pipe:")
    print("\n".join(problem_lines(report)))
    assert not failures, "\n".join(failures)


def test_scanning_never_modifies_the_images_folder(corpus) -> None:
    _, _, _, before, after = corpus
    assert before == after


def test_no_file_goes_unreported(corpus) -> None:
    """Every image-like entry in the corpus is either in the records or named
    in a notice; nothing is dropped silently, and nothing unknown appears."""
    _, expected, report, _, _ = corpus
    listed = {r.rel for r in report.records}
    expected_records = {n for n, h in expected.items() if h.split(":")[0] in ("ok", "converted", "skipped")}
    assert listed == expected_records


def test_sixteen_bit_image_is_a_ramp_not_white(corpus) -> None:
    images, _, _, _, _ = corpus
    from loratui.data.images import load_image

    loaded = load_image(images / "grey16.png")
    row = [loaded.image.getpixel((x, 0))[0] for x in range(0, 256, 32)]
    assert row[0] == 0
    assert loaded.image.getpixel((255, 0))[0] == 255
    assert row == sorted(row) and len(set(row)) == len(row), row
    assert abs(loaded.image.getpixel((128, 0))[0] - 128) <= 1


def test_captions_in_other_encodings_read_as_the_same_text(corpus) -> None:
    _, _, report, _, _ = corpus
    by_name = {r.rel: r for r in report.records}
    for name in ("caption_utf8_bom.png", "caption_utf16.png", "caption_latin1.png"):
        assert by_name[name].caption == make_bad_corpus.CAFE, name
    assert by_name["caption_empty.png"].caption == ""
    assert by_name["caption_multiline.png"].caption == "first tag, second tag, A sentence on line two."
    assert by_name["caption_other_ext.png"].caption_path.suffix == ".caption"


def test_corpus_counts_and_repeats(corpus) -> None:
    _, _, report, _, _ = corpus
    deep = next(r for r in report.records if r.rel == "3_repeated/nested/deep.png")
    assert deep.repeats == 3
    assert report.images_per_epoch == len(report.usable) + 2
    assert report.exit_code == 1  # some skipped, still trainable
    assert all(r.sha256 and len(r.sha256) == 64 for r in report.usable)
    assert all(r.bucket is None for r in report.skipped)


def test_rich_report_renders_every_file_name(corpus) -> None:
    from rich.console import Console

    _, _, report, _, _ = corpus
    console = Console(width=200, record=True, color_system=None, file=io.StringIO())
    console.print(render_report(report))
    text = console.export_text()
    assert "truncated.jpg" in text and "new\\nline.png" in text
    assert "Buckets" in text and "█" in text
