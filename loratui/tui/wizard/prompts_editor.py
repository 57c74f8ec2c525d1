"""A small list editor for the sample prompts: add, edit and remove, each with its seed."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from loratui.config import FieldSpec, SamplePrompt, coerce_value

SEED_SPEC = FieldSpec("sample.prompts", "seed", int, 1, "noise seed", 0, 2**32 - 1, None, None)


def prompt_label(number: int, prompt: SamplePrompt) -> str:
    negative = f"  (not: {prompt.negative})" if prompt.negative else ""
    return f"{number}. [seed {prompt.seed}] {prompt.prompt}{negative}"


class PromptsEditor(Vertical):
    """Highlight a prompt to edit it below; Enter in the text saves, Delete on the list removes."""

    BINDINGS = [
        Binding("delete", "remove", "Remove prompt", show=False),
    ]

    DEFAULT_CSS = """
    PromptsEditor { height: auto; }
    PromptsEditor OptionList { height: auto; max-height: 8; min-height: 3; }
    PromptsEditor Horizontal { height: auto; }
    PromptsEditor Input { width: 1fr; background: $panel; }
    PromptsEditor #prompt-seed { width: 12; }
    PromptsEditor Button { margin-left: 1; }
    PromptsEditor #prompt-error { color: $text-error; padding-left: 24; height: auto; }
    """

    class Changed(Message):
        """The list of prompts was edited."""

        def __init__(self, prompts: list[SamplePrompt]) -> None:
            super().__init__()
            self.prompts = prompts

    def __init__(self, prompts: list[SamplePrompt], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.prompts = [SamplePrompt(p.prompt, p.negative, p.seed, p.steps, p.guidance) for p in prompts]
        self.editing: int | None = None

    def compose(self) -> ComposeResult:
        yield OptionList(*self._labels(), id="prompt-list")
        with Horizontal():
            yield Label("prompt", classes="row-label")
            yield Input(placeholder="what to draw, e.g. photo of sks dog", id="prompt-text", compact=True)
        with Horizontal():
            yield Label("negative · seed", classes="row-label")
            yield Input(placeholder="what to avoid (optional)", id="prompt-negative", compact=True)
            yield Input("1", id="prompt-seed", compact=True)
        with Horizontal():
            yield Label("", classes="row-label")
            yield Button("Add", id="prompt-add", compact=True, classes="-small")
            yield Button("Save edit", id="prompt-save", compact=True, disabled=True, classes="-small")
            yield Button("Remove", id="prompt-remove", compact=True, disabled=True, classes="-small")
            yield Button("New", id="prompt-new", compact=True, classes="-small")
        yield Static("", id="prompt-error", markup=False)

    def _labels(self) -> list[str | Option]:
        if not self.prompts:
            return [Option("(no prompts yet: add one below to get samples while training)", disabled=True)]
        return [prompt_label(i, p) for i, p in enumerate(self.prompts, start=1)]

    def show(self, prompts: list[SamplePrompt]) -> None:
        """Take prompts set elsewhere (Review's "keep these") without reporting them back as an edit."""
        self.prompts = [SamplePrompt(p.prompt, p.negative, p.seed, p.steps, p.guidance) for p in prompts]
        options = self.query_one("#prompt-list", OptionList)
        options.clear_options()
        options.add_options(self._labels())

    def _refill(self, highlight: int | None = None) -> None:
        options = self.query_one("#prompt-list", OptionList)
        options.clear_options()
        options.add_options(self._labels())
        if highlight is not None and self.prompts:
            options.highlighted = min(highlight, len(self.prompts) - 1)
        self.post_message(self.Changed(list(self.prompts)))

    @on(OptionList.OptionHighlighted, "#prompt-list")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if not self.prompts or event.option_index >= len(self.prompts):
            return
        self.editing = event.option_index
        prompt = self.prompts[event.option_index]
        self.query_one("#prompt-text", Input).value = prompt.prompt
        self.query_one("#prompt-negative", Input).value = prompt.negative
        self.query_one("#prompt-seed", Input).value = str(prompt.seed)
        self._buttons()

    def _buttons(self) -> None:
        self.query_one("#prompt-save", Button).disabled = self.editing is None
        self.query_one("#prompt-remove", Button).disabled = self.editing is None

    def _entered(self) -> SamplePrompt | None:
        """The prompt in the inputs, or None with the reason shown."""
        error = self.query_one("#prompt-error", Static)
        text = self.query_one("#prompt-text", Input).value.strip()
        if not text:
            error.update("✗ type the prompt first")
            return None
        try:
            seed = coerce_value(SEED_SPEC, self.query_one("#prompt-seed", Input).value)
        except ValueError as exc:
            error.update(f"✗ seed {exc}")
            return None
        error.update("")
        negative = self.query_one("#prompt-negative", Input).value.strip()
        keep = self.prompts[self.editing] if self.editing is not None else SamplePrompt()
        return SamplePrompt(text, negative, seed, keep.steps, keep.guidance)

    @on(Button.Pressed, "#prompt-add")
    def action_add(self) -> None:
        prompt = self._entered()
        if prompt is None:
            return
        self.prompts.append(prompt)
        self.editing = len(self.prompts) - 1
        self._refill(self.editing)
        self._buttons()

    @on(Button.Pressed, "#prompt-save")
    def action_save(self) -> None:
        if self.editing is None:
            self.action_add()
            return
        prompt = self._entered()
        if prompt is not None:
            self.prompts[self.editing] = prompt
            self._refill(self.editing)

    @on(Input.Submitted, "#prompt-text, #prompt-negative, #prompt-seed")
    def _submitted(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#prompt-remove")
    def action_remove(self) -> None:
        if self.editing is None or not self.prompts:
            return
        del self.prompts[self.editing]
        index = self.editing
        self.editing = None
        self._refill(index if self.prompts else None)
        if not self.prompts:
            self.action_new()
        self._buttons()

    @on(Button.Pressed, "#prompt-new")
    def action_new(self) -> None:
        self.editing = None
        self.query_one("#prompt-list", OptionList).highlighted = None
        for name in ("text", "negative"):
            self.query_one(f"#prompt-{name}", Input).value = ""
        self.query_one("#prompt-seed", Input).value = str(len(self.prompts) + 1)
        self._buttons()
        self.query_one("#prompt-text", Input).focus()
