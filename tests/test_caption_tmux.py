"""The Captions step's captioning panel in a real terminal: tmux runs the wizard on a copy of sample_project
without captions, keys go in (F5, the model's folder, Enter), and every image gets a caption with the trigger
word; a second run from the same panel skips them all."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from tests.captioner_models import build_qwen_vl, build_wd_tagger
from tests.test_e2e_tmux import Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")


@pytest.mark.parametrize("kind", ["wd-tagger", "qwen2.5-vl"])
def test_wizard_captions_a_bare_project_from_the_keyboard(kind: str, sample_project: Path, tmp_path: Path) -> None:
    if kind == "wd-tagger":
        pytest.importorskip("onnxruntime")
    for caption in sample_project.rglob("*.txt"):
        caption.unlink()
    model = build_wd_tagger(tmp_path / kind) if kind == "wd-tagger" else build_qwen_vl(tmp_path / kind)
    env = {"TERM": "screen-256color", "LORATUI_CACHE_DIR": os.environ["LORATUI_CACHE_DIR"],
           "LORATUI_CONFIG_DIR": str(tmp_path / "settings"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           # tmux starts the command from its server's environment: name this tree's code explicitly
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = (f"cd {shlex.quote(str(sample_project.parent))} && env {exports} {shlex.quote(sys.executable)} "
               f"-m loratui new {shlex.quote(sample_project.name)}; sleep 60")
    tmux = Tmux(f"loratui-caption-{os.getpid()}", 100, 30, command)
    try:
        tmux.wait_for(lambda s: "1 Images" in s and "usable" in s, 60, "the wizard's image scan")
        tmux.keys("C-n")
        tmux.wait_for(lambda s: "f5 Caption" in s, 30, "the Captions step")
        tmux.keys("F5")
        tmux.wait_for(lambda s: "Caption the images" in s, 30, "the captioning panel")
        tmux.keys("C-u")  # the model field has focus; clear 'vlm'
        subprocess_literal(tmux, str(model))
        tmux.keys("Enter")
        done = tmux.wait_for(lambda s: "wrote 16 caption(s)" in s, 60, "the captions to be written")
        tmux.keys("F5")  # Run again: everything is captioned now
        again = tmux.wait_for(lambda s: "nothing to do" in s, 60, "the second run")
        tmux.keys("Escape")
        listed = tmux.wait_for(lambda s: "✓ toy_00.jpg" in s, 30, "the list to show the new captions")
    finally:
        tmux.close()
    assert "Traceback" not in done + again + listed
    assert "all 16 images already have a caption" in again
    captions = sorted((sample_project / "images").rglob("*.txt"))
    assert len(captions) == 16
    prefix = "zxc toy, zxc character, solo" if kind == "wd-tagger" else "zxc toy, "
    assert all(p.read_text().startswith(prefix) and len(p.read_text()) > len(prefix) for p in captions)


def subprocess_literal(tmux: Tmux, text: str) -> None:
    import subprocess

    subprocess.run(["tmux", "send-keys", "-t", tmux.name, "-l", text], check=True)
