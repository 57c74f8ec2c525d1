"""Only the cells that changed reach the terminal; a picture only when its cells were something else."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from textual._compositor import ChopsUpdate, LayoutUpdate
from textual.geometry import Region
from textual.strip import Strip

from loratui.tui.refresh import DRAW_INTERVAL_S, REMOTE_DRAW_INTERVAL_S, draw_interval_s
from loratui.tui.screen_diff import Picture, ScreenDiff, picture_style, register_picture

RED = Style(color="red")
CONSOLE = Console(file=io.StringIO(), color_system="truecolor", force_terminal=True)


def frame(*rows: str | list[Segment], width: int = 20) -> LayoutUpdate:
    strips = []
    for row in rows:
        segments = [Segment(row.ljust(width))] if isinstance(row, str) else row
        strips.append([Strip(segments)])
    return LayoutUpdate(strips, Region(0, 0, width, len(rows)))


def send(diff: ScreenDiff, update, width: int = 20, height: int = 3) -> str:
    return diff.update(update, CONSOLE, width, height)


def test_an_unchanged_frame_sends_nothing_and_a_changed_cell_sends_itself():
    diff = ScreenDiff()
    first = send(diff, frame("step 9 / 100", "loss 0.123", ""))
    assert "step 9 / 100" in first and "loss 0.123" in first
    assert send(diff, frame("step 9 / 100", "loss 0.123", "")) == ""
    changed = send(diff, frame("step 9 / 100", "loss 0.124", ""))
    assert changed == "\x1b[2;10H4"  # row 2, column 10: one move, one character


def test_close_changes_are_sent_as_one_run_and_far_ones_apart():
    diff = ScreenDiff()
    send(diff, frame("a b c d e f g h i j", "", ""))
    near = send(diff, frame("X b Y d e f g h i j", "", ""))
    assert near == "\x1b[1;1HX b Y"
    far = send(diff, frame("X b Y d e f g h i Z", "", ""))
    assert far == "\x1b[1;19HZ"


def test_style_changes_count_as_changes():
    diff = ScreenDiff()
    send(diff, frame([Segment("ok".ljust(20))], "", ""))
    sent = send(diff, frame([Segment("ok", RED), Segment(" " * 18)], "", ""))
    assert sent.startswith("\x1b[1;1H") and "ok" in sent and "\x1b[31m" in sent


def test_wide_characters_are_sent_whole():
    diff = ScreenDiff()
    send(diff, frame("ab漢字cd", "", ""))
    sent = send(diff, frame("ab漢子cd", "", ""))  # the second wide character changed
    assert sent == "\x1b[1;5H子"


def test_a_partial_update_is_cropped_as_textual_crops_it():
    diff = ScreenDiff()
    send(diff, frame("0123456789", "", "", width=10), width=10)
    chops = [{0: Strip([Segment("abcdefghij")])}, {0: None}, {0: None}]
    update = ChopsUpdate(chops, [(0, 2, 5)], [[10], [10], [10]])
    assert send(diff, update, width=10) == "\x1b[1;1Habcde"  # cut at the span's end, as Textual cuts it


def test_a_resize_forgets_the_screen():
    diff = ScreenDiff()
    send(diff, frame("same", "", ""))
    assert send(diff, frame("same", "", "")) == ""
    assert "same" in send(diff, frame("same", "", "", width=20), width=20, height=4)


def picture_rows(token: int, text_over: str = "") -> LayoutUpdate:
    marked = picture_style(token)
    rows: list[str | list[Segment]] = []
    for y in range(3):
        if y == 1 and text_over:
            rows.append([Segment("  "), Segment(text_over), Segment(" " * (4 - len(text_over)), marked),
                         Segment(" " * 14)])
        else:
            rows.append([Segment("  "), Segment("    ", marked), Segment(" " * 14)])
    return frame(*rows)


def test_a_picture_is_sent_when_it_appears_and_not_on_a_repaint():
    token = register_picture(Picture("\x1bPq#0~\x1b\\", 2, 0, 4, 3))
    diff = ScreenDiff()
    first = send(diff, picture_rows(token))
    assert first.count("\x1bPq#0~\x1b\\") == 1 and "\x1b[1;3H\x1bPq" in first
    assert send(diff, picture_rows(token)) == ""


def test_text_over_a_picture_is_sent_alone_and_the_picture_again_when_it_goes():
    token = register_picture(Picture("\x1bPq#1~\x1b\\", 2, 0, 4, 3))
    diff = ScreenDiff()
    send(diff, picture_rows(token))
    covered = send(diff, picture_rows(token, text_over="ab"))
    assert "\x1bP" not in covered and "ab" in covered
    uncovered = send(diff, picture_rows(token))
    assert uncovered.count("\x1bPq#1~\x1b\\") == 1


def test_text_left_over_part_of_a_picture_is_put_back_after_it():
    old = register_picture(Picture("\x1bPq#2~\x1b\\", 2, 0, 4, 3))
    new = register_picture(Picture("\x1bPq#3~\x1b\\", 2, 0, 4, 3))
    diff = ScreenDiff()
    send(diff, picture_rows(old, text_over="ab"))
    sent = send(diff, picture_rows(new, text_over="ab"))
    picture_at = sent.index("\x1bPq#3~")
    assert sent.index("ab", picture_at) > picture_at  # the toast's text drawn again over the new picture


@pytest.mark.parametrize(("env", "seconds"), [
    ({}, DRAW_INTERVAL_S),
    ({"SSH_CONNECTION": "10.0.0.2 50000 10.0.0.1 22"}, REMOTE_DRAW_INTERVAL_S),
    ({"LORATUI_REFRESH": "2"}, 2.0),
    ({"LORATUI_REFRESH": "0.25", "SSH_TTY": "/dev/pts/3"}, 0.25),
    ({"LORATUI_REFRESH": "fast"}, DRAW_INTERVAL_S),
    ({"LORATUI_REFRESH": "0"}, DRAW_INTERVAL_S),
])
def test_the_refresh_interval_is_configurable_and_slower_over_ssh(env, seconds, caplog):
    assert draw_interval_s(env) == seconds
    assert REMOTE_DRAW_INTERVAL_S > DRAW_INTERVAL_S
    if env.get("LORATUI_REFRESH") in ("fast", "0"):
        assert "LORATUI_REFRESH" in caplog.text


def test_changes_on_both_sides_of_a_picture_do_not_write_over_it():
    token = register_picture(Picture("\x1bPq#4~\x1b\\", 2, 0, 2, 1))
    marked = picture_style(token)

    def row(left: str, right: str) -> LayoutUpdate:
        return frame([Segment(left + " "), Segment("  ", marked), Segment(right + " " * 15)], "", "")

    diff = ScreenDiff()
    send(diff, row("a", "b"))
    sent = send(diff, row("A", "B"))
    assert sent == "\x1b[1;1HA\x1b[1;5HB"  # two runs: the picture's cells between them are left alone
