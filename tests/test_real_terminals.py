"""The sample gallery and the caption step's preview in real terminals, photographed: the pictures
on screen look like the PNG files.

An X server (Xvfb) runs xterm as a VT340 with 256 colour registers (sixel), xterm running
tmux (half-blocks, or sixel for a tmux built with it: 3.5a from Debian bookworm-backports),
foot inside weston (sixel, Wayland), and kitty (placeholders from 0.28, half-blocks in true
colour before: Debian 12 has 0.26.5). In each, ``loratui open PROJECT`` shows a project
whose two samples carry coloured corner marks, and ``loratui new`` shows the caption step
with one 3:2 training image; a screenshot (ImageMagick ``import -window root``) is searched
for the marks, and the picture between them is compared with the PNG scaled to the same
size: the mean colour difference, and that of every 6-pixel band (a wrong colour register
spoils one band), must stay under a bound; beside the picture there must be background, not
a black bar. Everything the terminal received is recorded with ``script``, and each picture
must have been sent once.

Skipped where Xvfb or xterm is missing, the tmux, foot and kitty cases where those are
(``.ci/run`` installs them all). Screenshots are written to ``LORATUI_SCREENSHOTS`` when it
names a folder (the README's come from there).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.terminal_screens import (Display, FootInWeston, Kitty, TmuxInXterm, Xterm, free_display_number,
                                    kitty_version, stop_apps, tmux_has_sixel, tmux_version, wait_for)

pytestmark = pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xterm") and shutil.which("import")),
                                reason="needs Xvfb, xterm and ImageMagick (.ci/run installs them)")

MARKS = {  # picture name: (top-left mark colour, bottom-right mark colour)
    "closeup": ((255, 0, 255), (0, 255, 255)),
    "wide": ((255, 128, 0), (0, 128, 255)),
}
MEAN_BOUND = 14.0
"""Mean absolute difference per channel (0–255) between the PNG and the screen: sixel's
256 colours and scaling stay well under it; a wrong colour or a shifted picture does not."""
HALFBLOCK_256_BOUND = 40.0
"""The same for half-blocks in 256 colours: the palette's steps are 40 apart (0, 95, 135, …)."""
BAND_BOUND = 40.0
"""The same for each 6-pixel band: a band painted with the wrong register fails it."""
SIXEL = re.compile(rb"\x1bP[0-9;]*q")
KITTY_PLACEHOLDER = chr(0x10EEEE).encode()
KITTY_PLACEHOLDERS_SINCE = (0, 28)


def sample_pictures(folder: Path) -> dict[str, Path]:
    """A green close-up with a yellow band and dark dashes (512×512), and a 3:2 gradient (192×128)."""
    rng = np.random.default_rng(1)
    closeup = np.zeros((512, 512, 3), dtype=np.uint8)
    closeup[...] = (40, 150, 60)
    closeup += rng.integers(0, 20, closeup.shape, dtype=np.uint8)
    closeup[100:140] = (235, 210, 40)
    for x in range(40, 470, 60):
        closeup[300:306, x:x + 30] = (20, 20, 30)
    y, x = np.mgrid[0:128, 0:192]
    wide = np.stack([x * 255 // 191, y * 255 // 127, np.full_like(x, 120)], axis=-1).astype(np.uint8)
    out = {}
    for name, pixels, mark in (("closeup", closeup, 48), ("wide", wide, 16)):
        top_left, bottom_right = MARKS[name]
        pixels[:mark, :mark] = top_left
        pixels[-mark:, -mark:] = bottom_right
        out[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(out[name])
    return out


@pytest.fixture
def gallery_project(sample_project: Path) -> tuple[Path, dict[str, Path]]:
    step = sample_project / "samples" / "step-000010"
    step.mkdir(parents=True)
    pictures = sample_pictures(step)
    for i, path in enumerate(pictures.values()):
        path.with_suffix(".txt").write_text(f"prompt: zxc toy, sample {i}\nseed: {i}\n", encoding="utf-8")
    return sample_project, pictures


def find_mark(shot: np.ndarray, colour: tuple[int, int, int], tolerance: int = 24) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the pixels of one colour, or None."""
    near = (np.abs(shot - np.array(colour)).max(axis=-1) <= tolerance)
    ys, xs = np.nonzero(near)
    if len(xs) < 16:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def picture_difference(shot: np.ndarray, png: Path) -> tuple[float, float, tuple[int, int, int, int]]:
    """Mean and worst-band difference between the screen and the PNG, found by its corner marks."""
    name = png.stem
    top_left, bottom_right = (find_mark(shot, c) for c in MARKS[name])
    assert top_left and bottom_right, f"{name}: corner marks not on the screen"
    box = (top_left[0], top_left[1], bottom_right[2], bottom_right[3])
    seen = shot[box[1]:box[3], box[0]:box[2]]
    with Image.open(png) as img:
        expected = np.asarray(img.convert("RGB").resize((box[2] - box[0], box[3] - box[1]),
                                                        Image.Resampling.LANCZOS), dtype=np.int32)
    diff = np.abs(seen - expected)
    bands = [float(diff[y:y + 6].mean()) for y in range(0, diff.shape[0] - 5, 6)]
    return float(diff.mean()), max(bands), box


def loratui_command(project: Path, typescript: Path, env: dict[str, str], command: str = "open") -> str:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # The app's pid goes to a file beside the typescript, for stop_apps: closing the terminal does not end it.
    pid_file = shlex.quote(str(typescript.with_suffix(".app-pid")))
    inner = (f"echo $$ > {pid_file}; exec env {exports} {shlex.quote(sys.executable)} -m loratui {command} "
             f"{shlex.quote(str(project))}")
    # script records every byte the terminal receives; -f so it is on disk while the app runs
    return f"script -q -f -c {shlex.quote(inner)} {shlex.quote(str(typescript))}"


def app_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"LORATUI_CACHE_DIR": os.environ["LORATUI_CACHE_DIR"], "LORATUI_CONFIG_DIR": str(tmp_path / "settings"),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.update(extra)
    return env


def check_gallery(display: Display, pictures: dict[str, Path], typescript: Path, shot_path: Path,
                  *, sixel: bool, bound: float = MEAN_BOUND, keep_as: str) -> dict[str, float]:
    """Wait for both pictures, photograph them, compare; then count what an idle minute sends."""
    def both_shown():
        shot = display.screenshot(shot_path)
        return shot if all(find_mark(shot, MARKS[n][1]) for n in pictures) else None

    shot = wait_for(both_shown, 180, "both sample pictures on the screen")
    time.sleep(2)  # the last rows of a picture may still be arriving
    shot = display.screenshot(shot_path)
    keep(shot_path, keep_as, [picture_difference(shot, png)[2] for png in pictures.values()])
    results: dict[str, float] = {}
    for name, png in pictures.items():
        mean, band, box = picture_difference(shot, png)
        assert mean < bound, f"{name}: the screen differs from the PNG by {mean:.1f} on average"
        assert band < max(BAND_BOUND, 2 * bound), f"{name}: one 6-pixel band differs by {band:.1f}"
        # Beside the picture: the pane's background, the same left and right (no black bar).
        height = box[3] - box[1]
        left = shot[box[1]:box[3], max(box[0] - 8, 0):box[0] - 2].reshape(-1, 3).mean(axis=0)
        right = shot[box[1]:box[3], box[2] + 2:box[2] + 8].reshape(-1, 3).mean(axis=0)
        assert np.abs(left - right).max() < 30, f"{name}: left of it {left}, right of it {right}"
        results[f"{name} mean"], results[f"{name} band"] = mean, band
        results[f"{name} height"] = height
    start = typescript.stat().st_size
    time.sleep(10)
    results["idle bytes/s"] = (typescript.stat().st_size - start) / 10
    sent = SIXEL.findall(typescript.read_bytes())
    if sixel:
        assert len(sent) == len(pictures), f"{len(sent)} sixel pictures sent for {len(pictures)} on screen"
    assert results["idle bytes/s"] < 2000
    return results


def keep(shot: Path, name: str, boxes: list[tuple[int, int, int, int]]) -> None:
    """The screenshot to LORATUI_SCREENSHOTS, whole (NAME-screen.png) and around the pictures (NAME),
    with the captions or the info line below them."""
    folder = os.environ.get("LORATUI_SCREENSHOTS")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    target = Path(folder) / name
    shutil.copy(shot, target.with_name(f"{target.stem}-screen.png"))
    with Image.open(shot) as img:
        left, top = min(b[0] for b in boxes) - 24, min(b[1] for b in boxes) - 24
        right, bottom = max(b[2] for b in boxes) + 24, max(b[3] for b in boxes) + 56
        img.crop((max(left, 0), max(top, 0), min(right, img.width), min(bottom, img.height))).save(target)


@pytest.fixture
def display(tmp_path: Path) -> Iterator[Display]:
    d = Display(free_display_number())
    yield d
    stop_apps(tmp_path)  # after the terminal fixture has closed its terminal
    d.close()


def tmux_binaries() -> list[str]:
    """The tmux in PATH, and LORATUI_TEST_TMUX (another build, e.g. 3.3a beside 3.5a)."""
    found = [shutil.which("tmux") or "", os.environ.get("LORATUI_TEST_TMUX", "")]
    return [b for b in dict.fromkeys(found) if b and os.access(b, os.X_OK)]


HAVE_FOOT = bool(shutil.which("foot") and shutil.which("weston"))
TERMINALS = [pytest.param("xterm", id="xterm"),
             *(pytest.param(f"tmux:{b}", id=f"tmux-{tmux_version(b)}") for b in tmux_binaries()),
             pytest.param("foot", id="foot", marks=pytest.mark.skipif(not HAVE_FOOT, reason="needs foot and weston")),
             pytest.param("kitty", id="kitty", marks=pytest.mark.skipif(kitty_version() is None, reason="needs kitty"))]


@pytest.fixture(params=TERMINALS)
def terminal(request, display: Display, tmp_path: Path) -> Iterator[Xterm | TmuxInXterm | FootInWeston]:
    kind = request.param
    if kind == "xterm":
        term = Xterm(display)
    elif kind == "foot":
        term = FootInWeston(display, tmp_path / "xdg", tmp_path / "weston.log")
    elif kind == "kitty":
        term = Kitty(display, tmp_path / "kitty.log")
    else:
        term = TmuxInXterm(display, kind.split(":", 1)[1])
    yield term
    term.close()


def expected_method(terminal) -> str:
    """What loratui should choose there: xterm (VT340) and foot say they take sixel; a tmux passes
    it when built with it; kitty gets placeholders from 0.28 (older ones draw them as boxes)."""
    if isinstance(terminal, Kitty):
        return "kitty" if terminal.version >= KITTY_PLACEHOLDERS_SINCE else "halfblock"
    if isinstance(terminal, TmuxInXterm) and not tmux_has_sixel(terminal.binary):
        return "halfblock"
    return "sixel"


def check_method(terminal, method: str, typescript: Path) -> None:
    sent = typescript.read_bytes()
    assert (KITTY_PLACEHOLDER in sent) == (method == "kitty"), "kitty placeholders sent where they should not be"
    if isinstance(terminal, Kitty) and method == "halfblock":
        assert b"\x1b[38;2;" in sent  # kitty says it has true colour (COLORTERM=truecolor)


def shot_name(terminal, method: str, what: str = "") -> str:
    # xterm-sixel.png, foot-caption-sixel.png, tmux-3.5a.png, kitty-0.26.5-halfblock.png …
    suffix = "" if isinstance(terminal, TmuxInXterm) else f"-{method}"
    return f"{terminal.label}{what}{suffix}.png"


def test_the_sample_gallery_looks_like_the_pngs(terminal, display, gallery_project, tmp_path, record_property):
    project, pictures = gallery_project
    typescript = tmp_path / "gallery.typescript"
    terminal.start(loratui_command(project, typescript, app_env(tmp_path)))
    method = expected_method(terminal)
    results = check_gallery(display, pictures, typescript, tmp_path / "gallery.png", sixel=method == "sixel",
                            bound=HALFBLOCK_256_BOUND if method == "halfblock" else MEAN_BOUND,
                            keep_as=shot_name(terminal, method))
    check_method(terminal, method, typescript)
    for key, value in results.items():
        record_property(key, value)
    if isinstance(terminal, TmuxInXterm):
        assert "Gi=" not in terminal.pane_title()  # no kitty graphics probe reached tmux


def test_xterm_half_blocks_in_256_colours(display, gallery_project, tmp_path):
    # TERM=xterm and no COLORTERM, as over SSH: the terminal answers that it has 256 colours.
    project, pictures = gallery_project
    typescript = tmp_path / "halfblock.typescript"
    term = Xterm(display)
    term.start(loratui_command(project, typescript, app_env(tmp_path, LORATUI_IMAGES="halfblock")))
    try:
        check_gallery(display, pictures, typescript, tmp_path / "halfblock.png", sixel=False,
                      bound=HALFBLOCK_256_BOUND, keep_as="xterm-halfblock-256.png")
        assert b"\x1b[38;5;" in typescript.read_bytes()  # 256-colour codes, not 16
    finally:
        term.close()


@pytest.mark.skipif(shutil.which("xdotool") is None, reason="needs xdotool to press keys")
def test_the_caption_preview_of_a_3_2_picture_looks_like_the_png(terminal, display, sample_project, tmp_path):
    # One 3:2 training image: the caption step previews it beside its caption.
    images = sample_project / "images"
    shutil.rmtree(images)
    images.mkdir()
    made = sample_pictures(tmp_path)["wide"]
    with Image.open(made) as img:
        img.resize((384, 256), Image.Resampling.NEAREST).save(images / "wide.png")
    (images / "wide.txt").write_text("zxc toy, a gradient", encoding="utf-8")
    typescript = tmp_path / "caption.typescript"
    terminal.start(loratui_command(sample_project, typescript, app_env(tmp_path), command="new"))

    def wizard_ready() -> bool | None:
        return (typescript.exists() and b"usable" in typescript.read_bytes()) or None

    wait_for(wizard_ready, 180, "the wizard's image scan")
    time.sleep(2)
    terminal.press("ctrl+n")
    shot_path = tmp_path / "caption.png"
    wait_for(lambda: find_mark(display.screenshot(shot_path), MARKS["wide"][1]), 180, "the caption preview")
    time.sleep(2)  # the last rows of a picture may still be arriving
    shot = display.screenshot(shot_path)
    method = expected_method(terminal)
    mean, band, box = picture_difference(shot, images / "wide.png")
    keep(shot_path, shot_name(terminal, method, "-caption"), [box])
    bound = HALFBLOCK_256_BOUND if method == "halfblock" else MEAN_BOUND
    assert mean < bound and band < max(BAND_BOUND, 2 * bound), (mean, band)
    # The info line under the preview stays readable: dark pane there, not the picture's bright bottom row.
    below = shot[box[3] + 2:box[3] + 12, box[0]:box[2]]
    assert float(np.median(below)) < 70, f"the rows under the preview are covered ({np.median(below):.0f})"
    check_method(terminal, method, typescript)
    if method == "sixel":
        width, height = box[2] - box[0], box[3] - box[1]
        assert abs(width / height - 1.5) < 0.05, f"the 3:2 picture is drawn {width}×{height}"
        assert len(SIXEL.findall(typescript.read_bytes())) == 1
