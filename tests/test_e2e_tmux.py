"""The main path in a real terminal: tmux runs loratui, keys go in, the screen is read back.

wizard → Start → the dashboard's step counter advances with a loss → p pauses (the counter stops)
→ p resumes → the run finishes → the LoRA file exists.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratui.config import apply_override, load_config, save_config

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")

STEP = re.compile(r"Step\s+(\d+)\s*/\s*(\d+)")


class Tmux:
    def __init__(self, name: str, width: int, height: int, command: str) -> None:
        self.name = name
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), command],
                       check=True)

    def keys(self, *keys: str) -> None:
        for key in keys:
            subprocess.run(["tmux", "send-keys", "-t", self.name, key], check=True)
            time.sleep(0.4)

    def screen(self) -> str:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return out.stdout

    def wait_for(self, predicate, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def _step(text: str) -> int | None:
    m = STEP.search(text)
    return int(m.group(1)) if m else None


def test_wizard_to_finished_lora_in_a_real_terminal(sample_project: Path, tmp_path: Path, record_property) -> None:
    cfg = load_config(sample_project)
    for a in ("train.max_steps=30", "sample.every_n_steps=0", "save.every_n_steps=0"):
        apply_override(cfg, a)
    save_config(sample_project, cfg)
    env = {
        "TERM": "screen-256color",
        "LORATUI_CACHE_DIR": os.environ["LORATUI_CACHE_DIR"],
        "LORATUI_CONFIG_DIR": str(tmp_path / "settings"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # Textual draws on stderr, so nothing is redirected: the pane is the only output.
    command = (f"cd {shlex.quote(str(sample_project.parent))} && env {exports} {shlex.quote(sys.executable)} "
               f"-m loratui new {shlex.quote(sample_project.name)}; sleep 120")
    tmux = Tmux(f"loratui-e2e-{os.getpid()}", 80, 24, command)
    try:
        tmux.wait_for(lambda s: "1 Images" in s and "usable" in s, 60, "the wizard's image scan")
        for _ in range(5):
            tmux.keys("C-n")
        # Start is refused until the model check has finished; wait for the review to say so.
        tmux.wait_for(lambda s: "Ready." in s and "optimizer steps" in s, 120, "the review step to be ready")
        tmux.keys("C-n")  # Start
        first = tmux.wait_for(lambda s: (_step(s) or 0) >= 2 and "Loss" in s, 180, "the step counter")
        loss = re.search(r"Loss\s+([0-9.]+)", first)
        assert loss is not None and float(loss.group(1)) > 0
        tmux.keys("p")
        paused = tmux.wait_for(lambda s: "PAUSED" in s, 60, "the paused state")
        at_pause = _step(paused)
        time.sleep(3)
        assert _step(tmux.screen()) == at_pause, "the counter moved while paused"
        tmux.keys("p")
        tmux.wait_for(lambda s: (_step(s) or 0) > at_pause, 120, "training to go on after resume")
        done = tmux.wait_for(lambda s: "Finished at step 30" in s or "FINISHED" in s, 300, "the run to finish")
    finally:
        tmux.close()
    lora = sample_project / "output" / "zxc_toy.safetensors"
    assert lora.is_file()
    assert "Traceback" not in done
    assert "30 / 30" in done or "Finished at step 30" in done
    record_property("summary", f"tmux 80x24: wizard → Start → steps counted → paused at {at_pause} "
                               "(counter held) → resumed → finished; LoRA written")
