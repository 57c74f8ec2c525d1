"""Run the project wizard on its own, to try it as a user would (e.g. inside tmux).

    python tests/tui/run_wizard.py [PROJECT_DIR] [--theme dark|light] [--fake-model]

Without a folder a temporary project is made with a small demo corpus in
``images/`` (a few pictures, one corrupt file, one image without caption).
The tests use the same host app and corpus.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PIL import Image  # noqa: E402
from textual.app import App  # noqa: E402

from loratui.project import create_project  # noqa: E402
from loratui.tui.wizard import WizardScreen  # noqa: E402
from loratui.tui.wizard.services import Estimate, Services, rough_estimate  # noqa: E402

# (relative path, size, caption or None); repeats come from the 10_dog folder.
CORPUS: tuple[tuple[str, tuple[int, int], str | None], ...] = (
    ("beach.png", (512, 512), "a photo of sks dog on a beach"),
    ("park.jpg", (768, 512), "sks dog running in a park"),
    ("10_dog/close.png", (512, 768), "close-up of sks dog"),
    ("10_dog/sofa.png", (640, 640), None),
)


def make_corpus(images: Path) -> Path:
    """A small, fixed dataset: gradients so the preview shows something, one corrupt file."""
    for rel, (w, h), caption in CORPUS:
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        down = Image.linear_gradient("L").resize((w, h))
        across = down.rotate(90).resize((w, h))
        Image.merge("RGB", (across, down, Image.new("L", (w, h), 128))).save(path)
        if caption is not None:
            path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    return images


def make_project(root: Path) -> Path:
    create_project(root, name="demo_lora")
    make_corpus(root / "images")
    return root


@dataclass
class FakeModelInfo:
    spec: str
    source_kind: str
    family: str
    prediction_type: str
    description: str
    resolution: int | None = None


FAKE_FAMILIES = {"builtin:tiny-sd": ("sd1", "epsilon"), "builtin:tiny-sd2": ("sd2", "v_prediction"),
                 "builtin:tiny-sdxl": ("sdxl", "epsilon"), "builtin:tiny-sd3": ("sd3", "flow"),
                 "builtin:tiny-flux": ("flux", "flow"), "black-forest-labs/FLUX.1-dev": ("flux", "flow")}


def fake_probe(spec: str, config_source: str | None, allow_pickle: bool) -> FakeModelInfo:
    """Built-ins (and FLUX.1-dev's hub id, a full-size model) answer at once; anything else is 'missing',
    worded like the loader."""
    if spec in FAKE_FAMILIES:
        family, pred = FAKE_FAMILIES[spec]
        if spec.startswith("builtin:"):
            return FakeModelInfo(spec, "builtin", family, pred, f"built-in tiny {family}")
        return FakeModelInfo(spec, "hub", family, pred, f"hub model {spec}", 1024)
    raise ValueError(f"{spec} does not exist; check the path (or, for a Hugging Face model, give its id as "
                     "org/name)")


def fake_estimate(project_dir: Path, cfg: Any, total: int, family: str | None, *, measure: bool) -> Estimate:
    return rough_estimate(cfg, total, family)


def fake_plan_memory(project_dir: Path, cfg: Any) -> list[str]:
    """A fixed memory plan naming the model and precision it was asked about (the real one takes seconds)."""
    return [f"memory plan for {cfg.model.base} at {cfg.data.resolution} px: base {cfg.model.base_precision}",
            "  24 GB: fastest that fits: fp8 + checkpointing (≈ 16.3 GiB, 1.78× bf16's step time)"]


def fake_services() -> Services:
    """Instant, fixed answers for everything but the scan (which is fast and real)."""
    return Services(probe=fake_probe, model_errors=lambda: (ValueError,),
                    count_params=lambda project_dir, cfg: 797_184, estimate=fake_estimate,
                    plan_memory=fake_plan_memory)


class WizardHost(App[None]):
    """The smallest app that shows the wizard: the shell's themes, one screen, Start recorded."""

    def __init__(self, project_dir: Path, *, services: Services | None = None, theme: str = "dark") -> None:
        super().__init__()
        self.project_dir = project_dir
        self.services = services
        self.theme_name = theme
        self.started: list[Path] = []
        self.result: Path | None = None

    def on_mount(self) -> None:
        try:
            from loratui.tui.themes import discover_themes

            for theme in discover_themes()[0].values():
                self.register_theme(theme)
        except ImportError:
            pass
        fallback = {"dark": "textual-dark", "light": "textual-light"}
        self.theme = self.theme_name if self.theme_name in self.available_themes else fallback[self.theme_name]
        self.push_screen(WizardScreen(self.project_dir, services=self.services), self._finished)

    def _finished(self, result: Path | None) -> None:
        self.result = result

    def on_wizard_screen_start(self, message: WizardScreen.Start) -> None:
        self.started.append(message.project_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project", nargs="?", type=Path)
    parser.add_argument("--theme", default="dark", choices=("dark", "light"))
    parser.add_argument("--fake-model", action="store_true", help="skip the real model probe and counts")
    args = parser.parse_args()
    project = args.project or make_project(Path(tempfile.mkdtemp(prefix="loratui-wizard-")) / "demo_lora")
    app = WizardHost(project, services=fake_services() if args.fake_model else None, theme=args.theme)
    app.run()
    print(f"project: {project}; started: {bool(app.started)}")


if __name__ == "__main__":
    main()
