"""Step 4, LoRA: its type, its size and which layers it touches."""

from __future__ import annotations

import copy
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import Static

from loratui.tui.wizard.base import WizardStep, unlisted

_COUNT_INPUTS = ("lora.type", "lora.lokr_factor", "lora.rank", "lora.preset", "lora.train_text_encoder", "model.base",
                 "model.config_source")
# Counting loads the model; wait until the user stops changing things.
_COUNT_DELAY = 0.5


def scale_text(rank: int, alpha: float) -> str:
    return f"effective scale alpha / rank = {alpha:g} / {rank} = {alpha / rank:.3g}"


def human_count(n: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit} ({n:,})"
    return str(n)


class LoraStep(WizardStep):
    """Type, rank, alpha and target layers; the scale and the trainable parameter count update live."""

    title = "LoRA"

    class Counted(Message):
        def __init__(self, key: tuple[Any, ...], text: str) -> None:
            super().__init__()
            self.key = key
            self.text = text

    def __init__(self, state: Any) -> None:
        super().__init__(state)
        self._counted: tuple[Any, ...] | None = None

    def compose_step(self) -> ComposeResult:
        yield Static("A LoRA adds (alpha / rank) · B·A beside each chosen layer; only A and B are trained.",
                     classes="step-intro", markup=False)
        yield self.field("lora.type", label="type")
        yield self.field("lora.rank", label="rank")
        yield self.field("lora.alpha", label="alpha")
        yield Static("", id="lora-scale", classes="live-note", markup=False)
        yield self.field("lora.preset", label="layers")
        yield self.field("lora.lokr_factor", label="LoKr factor")
        yield self.field("lora.train_text_encoder", label="text encoder LoRA")
        yield self.field("lora.init_lora", long=True, label="start from LoRA", placeholder="empty: start from zeros")
        for path in unlisted(("lora",), {f.path for f in self.fields}):
            yield self.field(path)
        yield Static("", id="lora-params", classes="live-note", markup=False)

    def on_built(self) -> None:
        self._show_scale()

    def entered(self) -> None:
        self._show_scale()
        if self._counted != self._key():
            self._count_now()

    def config_changed(self, path: str) -> None:
        if path in ("lora.rank", "lora.alpha"):
            self._show_scale()
        if path in _COUNT_INPUTS and self.display:
            self.debounce(_COUNT_DELAY, self._count_now)

    def _show_scale(self) -> None:
        lora = self.state.cfg.lora
        self.query_one("#lora-scale", Static).update(scale_text(lora.rank, lora.alpha))

    def _key(self) -> tuple[Any, ...]:
        cfg = self.state.cfg
        return (cfg.lora.type, cfg.lora.lokr_factor, cfg.lora.rank, cfg.lora.preset, cfg.lora.train_text_encoder,
                cfg.model.base, cfg.model.config_source)

    def _count_now(self) -> None:
        self.query_one("#lora-params", Static).update("trainable parameters: counting …")
        self._count(self._key(), copy.deepcopy(self.state.cfg))

    @work(thread=True, exclusive=True, group="count", exit_on_error=False)
    def _count(self, key: tuple[Any, ...], cfg: Any) -> None:
        try:
            count = self.state.services.count_params(self.state.project_dir, cfg)
        except Exception as exc:  # noqa: BLE001 - shown beside the field instead of a traceback
            text = f"trainable parameters: {exc}"
        else:
            text = ("trainable parameters: counted when the model loads" if count is None
                    else f"trainable parameters: {human_count(count)}")
        self.post_message(self.Counted(key, text))

    def on_lora_step_counted(self, event: Counted) -> None:
        if event.key == self._key():
            self._counted = event.key
            self.query_one("#lora-params", Static).update(event.text)
