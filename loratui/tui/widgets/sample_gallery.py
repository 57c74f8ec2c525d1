"""The newest sample images side by side, each with its prompt and step; or one prompt's images
across steps side by side, which is how "is it still getting better?" is answered."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

from textual.app import ComposeResult
from textual.widget import Widget
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
    """The samples of one step: the newest, unless the user stepped back to an older one."""

    DEFAULT_CSS = """
    SampleGallery {
        height: 1fr;
    }
    SampleGallery > .sample-row {
        height: 1fr;
    }
    SampleGallery > .sample-gallery--empty {
        color: $text-muted;
        width: 1fr;
        content-align: center middle;
        height: 1fr;
    }
    """

    samples: reactive[tuple[SampleReady, ...]] = reactive((), init=False)
    """The samples on show (all from one step, or one prompt's over steps when comparing)."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._all: list[SampleReady] = []
        self._pinned: int | None = None
        """The step chosen with [ and ]; None follows the newest."""
        self.comparing: int | None = None
        """Index into :attr:`prompts` while one prompt is shown across steps; None shows one step."""
        self._compare_end: int | None = None
        """While comparing: the newest step on show, moved with [ and ]; None follows the newest."""
        self._swapping = asyncio.Lock()

    def compose(self) -> ComposeResult:
        yield from self._content()

    def _content(self) -> Iterator[Widget]:
        if not self.samples:
            yield Label("No samples yet — press s to make one now.", classes="sample-gallery--empty")
            return
        yield Horizontal(*(SampleCard(sample) for sample in self.samples[:MAX_SHOWN]), classes="sample-row")

    async def watch_samples(self) -> None:
        # Quick [ [ presses change the samples again while the last swap is still removing and
        # mounting; one swap at a time, each showing the samples of its moment, ends on the last.
        async with self._swapping:
            await self.remove_children()
            await self.mount_all(list(self._content()))

    @property
    def steps(self) -> list[int]:
        return sorted({s.step for s in self._all})

    @property
    def shown_step(self) -> int | None:
        steps = self.steps
        if not steps:
            return None
        return self._pinned if self._pinned in steps else steps[-1]

    def update_samples(self, samples: list[SampleReady]) -> None:
        """Every sample of the run so far; the gallery picks the step to show."""
        if len(samples) != len(self._all) or samples[-1:] != self._all[-1:]:
            self._all = list(samples)
            self._show_step()

    @property
    def prompts(self) -> list[tuple[str, int]]:
        """Each distinct (prompt, seed), in the order they first appeared."""
        return list(dict.fromkeys((s.prompt, s.seed) for s in self._all))

    def compare_next(self) -> None:
        """Show the next prompt across steps; after the last prompt, back to one step's samples."""
        count = len(self.prompts)
        if not count:
            return
        nxt = 0 if self.comparing is None else self.comparing + 1
        self.comparing = nxt if nxt < count else None
        self._compare_end = None
        self._show_step()

    def _compared(self) -> list[SampleReady]:
        """The compared prompt's samples, one per step, oldest first."""
        if self.comparing is None or self.comparing >= len(self.prompts):
            return []
        key = self.prompts[self.comparing]
        by_step = {s.step: s for s in self._all if (s.prompt, s.seed) == key}
        return [by_step[step] for step in sorted(by_step)]

    def browse(self, delta: int) -> None:
        """Step to an older (-1) or newer (+1) set of samples."""
        if self.comparing is not None:
            steps = [s.step for s in self._compared()]
            if not steps:
                return
            end = steps.index(self._compare_end) if self._compare_end in steps else len(steps) - 1
            end = min(max(end + delta, min(MAX_SHOWN, len(steps)) - 1), len(steps) - 1)
            self._compare_end = None if end == len(steps) - 1 else steps[end]
            self._show_step()
            return
        steps, current = self.steps, self.shown_step
        if current is None:
            return
        index = min(max(steps.index(current) + delta, 0), len(steps) - 1)
        self._pinned = None if index == len(steps) - 1 else steps[index]
        self._show_step()

    def caption(self) -> str:
        if self.comparing is not None and self.samples:
            prompt = self.samples[-1].prompt
            short = prompt if len(prompt) <= 30 else prompt[:29] + "…"
            return (f"Samples · {short!r} across steps {self.samples[0].step}–{self.samples[-1].step} · "
                    "[ ] older/newer · v next prompt")
        steps, current = self.steps, self.shown_step
        if current is None:
            return "Samples"
        where = steps.index(current) + 1
        if where == len(steps):
            return f"Samples · step {current}" + (" · [ older" if len(steps) > 1 else "")
        return f"Samples · step {current} ({where} of {len(steps)}) · [ older · ] newer"

    def _show_step(self) -> None:
        if self.comparing is not None:
            compared = self._compared()
            steps = [s.step for s in compared]
            end = steps.index(self._compare_end) + 1 if self._compare_end in steps else len(compared)
            new = tuple(compared[max(0, end - MAX_SHOWN):end])
            if new != self.samples:
                self.samples = new
            return
        step = self.shown_step
        new = tuple(s for s in self._all if s.step == step)[-MAX_SHOWN:]
        if new != self.samples:
            self.samples = new
