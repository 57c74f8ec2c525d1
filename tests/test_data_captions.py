"""Caption files and the caption text each training step sees."""

from __future__ import annotations

import codecs
import os
import random
import stat
from pathlib import Path

import pytest

from loratui.data.captions import (
    apply_prefix,
    build_caption,
    caption_path_for,
    count_tokens_estimate,
    find_caption,
    read_caption,
    tag_frequency,
    token_limit_warning,
    write_caption,
)

TEXT = "café, crème brûlée"


@pytest.mark.parametrize(
    "payload, note",
    [
        (TEXT.encode("utf-8"), None),
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), None),
        (TEXT.encode("utf-16"), "UTF-16"),  # with BOM, native order
        (codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), "UTF-16"),
        (TEXT.encode("utf-16-le"), "UTF-16 without"),
        (TEXT.encode("latin-1"), "not UTF-8"),
    ],
)
def test_read_caption_decodes_every_common_encoding(tmp_path: Path, payload: bytes, note: str | None) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(payload)
    caption = read_caption(path)
    assert caption.text == TEXT
    if note is None:
        assert caption.notes == []
    else:
        assert any(note in n for n in caption.notes), caption.notes


def test_windows_quotes_in_cp1252_are_not_mojibake(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("“quoted” tag".encode("cp1252"))
    assert read_caption(path).text == "“quoted” tag"


def test_lines_are_joined_with_commas_and_blank_lines_dropped(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"  one, two,\r\n\r\n  three   four \n")
    caption = read_caption(path)
    assert caption.text == "one, two, three four"
    assert any("2 lines" in n for n in caption.notes)


def test_empty_caption_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"\n  \n")
    caption = read_caption(path)
    assert caption.text == "" and "caption file is empty" in caption.notes


def test_caption_extension_mixup_is_found_and_named(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    (tmp_path / "a.caption").write_text("x")
    found = find_caption(image, ".txt")
    assert found.exists and found.path.name == "a.caption" and "a.caption" in (found.note or "")
    (tmp_path / "b.txt").write_text("x")
    assert caption_path_for(tmp_path / "b.jpg", "caption") == tmp_path / "b.txt"
    missing = find_caption(tmp_path / "c.png", ".txt")
    assert not missing.exists and missing.path == tmp_path / "c.txt" and missing.note is None


def test_write_caption_replaces_atomically_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    write_caption(path, "new ünïcode")
    assert path.read_bytes() == "new ünïcode".encode("utf-8")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    write_caption(tmp_path / "fresh.txt", "made")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "fresh.txt"]  # no temp left


def test_write_caption_failure_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")

    def fail(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("loratui.data.captions.os.replace", fail)
    with pytest.raises(OSError):
        write_caption(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_trigger_word_prepended_only_when_missing() -> None:
    rng = random.Random(0)
    assert build_caption("a dog, grass", trigger_word="sks", rng=rng) == "sks, a dog, grass"
    assert build_caption("SKS, a dog", trigger_word="sks", rng=rng) == "SKS, a dog"
    assert build_caption("photo of sks dog", trigger_word="sks", rng=rng) == "photo of sks dog"
    assert build_caption("sksx dog", trigger_word="sks", rng=rng) == "sks, sksx dog"
    assert build_caption("", trigger_word="sks", rng=rng) == "sks"
    assert build_caption("  a dog  ", rng=rng) == "a dog"


def test_shuffle_keeps_the_first_tags_and_every_tag() -> None:
    caption = "a, b, c, d, e, f, g"
    seen = set()
    for seed in range(20):
        out = build_caption(caption, trigger_word="sks", shuffle_tags=True, keep_tokens=2, rng=random.Random(seed))
        tags = out.split(", ")
        assert tags[:2] == ["sks", "a"]
        assert sorted(tags[2:]) == ["b", "c", "d", "e", "f", "g"]
        seen.add(out)
    assert len(seen) > 5  # it really shuffles


def test_same_rng_state_gives_the_same_caption() -> None:
    def run(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [
            build_caption("a, b, c, d", shuffle_tags=True, keep_tokens=0, dropout=0.3, rng=rng)
            for _ in range(50)
        ]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_dropout_rate_is_about_right() -> None:
    rng = random.Random(1)
    outs = [build_caption("a, b", trigger_word="t", dropout=0.25, rng=rng) for _ in range(2000)]
    assert 0.2 < outs.count("") / len(outs) < 0.3
    assert build_caption("a", dropout=1.0, rng=rng) == ""


def test_tag_frequency_counts_stripped_tags() -> None:
    freq = tag_frequency(["sks, dog , grass", "sks,cat", ""])
    assert freq == {"sks": 2, "cat": 1, "dog": 1, "grass": 1}
    assert list(freq)[0] == "sks"


def test_prefix_add_is_idempotent_and_remove_only_takes_a_leading_tag() -> None:
    assert apply_prefix("a dog", "sks") == "sks, a dog"
    assert apply_prefix("sks, a dog", "sks,") == "sks, a dog"
    assert apply_prefix("", "sks") == "sks"
    assert apply_prefix("sks, a dog", "sks", remove=True) == "a dog"
    assert apply_prefix("a dog, sks", "sks", remove=True) == "a dog, sks"
    assert apply_prefix("sks", "sks", remove=True) == ""


def test_token_limit_uses_the_real_tokenizer_when_given() -> None:
    assert token_limit_warning("short caption") is None
    assert count_tokens_estimate("a photo, of 12 cats") == 7
    long = ", ".join(f"tag{i}" for i in range(60))
    warning = token_limit_warning(long)
    assert warning and "about" in warning and "truncated" in warning
    assert token_limit_warning("anything", tokenize=lambda s: 76) == (
        "caption is 76 tokens; CLIP reads 75, the rest will be truncated"
    )
    assert token_limit_warning("anything", tokenize=lambda s: 75) is None
