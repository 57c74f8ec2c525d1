"""The newest sample images side by side, each with its prompt and step."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Label

from loratui.events import SampleReady
from loratui.tui.widgets.image_view import ImageView

MAX_SHOWN = 4
"""More than four images side by side are too small to judge in a terminal."""


class SampleCard(Vertical):
    """One sample: the picture, then its prompt and where it came from."""

    DEFAULT_CSS = """
    SampleCard {
        width: 1fr;
        height: 1fr;
        padding: 0 1 0 0;
    }
    SampleCard > .sample-card--prompt {
        width: 1fr;
        height: 1;
        text-overflow: ellipsis;
        text-wrap: nowrap;
    }
    SampleCard > .sample-card--meta {
        color: $text-muted;
        height: 1;
    }
    """

    def __init__(self, sample: SampleReady) -> None:
        super().__init__()
        self.sample = sample

    def compose(self) -> ComposeResult:
        yield ImageView(Path(self.sample.path))
        yield Label(self.sample.prompt or "(empty prompt)", classes="sample-card--prompt", markup=False)
        yield Label(f"step {self.sample.step} · seed {self.sample.seed}", classes="sample-card--meta")


class SampleGallery(Vertical):
    """Shows the samples of the newest step that produced any."""

    DEFAULT_CSS = """
    SampleGallery {
        height: 1fr;
    }
    SampleGallery > #sample-row {
        height: 1fr;
    }
    SampleGallery > .sample-gallery--empty {
        color: $text-muted;
        width: 1fr;
        content-align: center middle;
        height: 1fr;
    }
    """

    samples: reactive[tuple[SampleReady, ...]] = reactive((), recompose=True)
    """The samples on show (all from one step)."""

    def compose(self) -> ComposeResult:
        if not self.samples:
            yield Label("No samples yet — press s to make one now.", classes="sample-gallery--empty")
            return
        with Horizontal(id="sample-row"):
            for sample in self.samples[:MAX_SHOWN]:
                yield SampleCard(sample)

    def show(self, samples: list[SampleReady]) -> None:
        new = tuple(samples[-MAX_SHOWN:])
        if new != self.samples:
            self.samples = new
