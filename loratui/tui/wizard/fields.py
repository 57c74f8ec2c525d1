"""One config field on screen: label, editor, and the reason beside it when the value is wrong.

The editor is chosen from the field's declaration in ``loratui.config``:
choices become a Select, booleans a Switch, everything else an Input that is
checked on every keystroke with ``coerce_value``. A field only reports values
that passed every check, so whoever listens can save without re-validating.
"""

from __future__ import annotations

from typing import Any, Callable

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Static, Switch

from loratui.config import FieldSpec, coerce_value, field_spec

Check = Callable[[Any], "str | None"]
"""An extra rule beyond the declaration: returns the reason a value is wrong, or None."""


def field_id(path: str) -> str:
    """The DOM id of the field for a config path (``train.seed`` → ``train-seed``)."""
    return path.replace(".", "-").replace("_", "-")


def format_value(spec: FieldSpec, value: Any) -> str:
    """Text for an Input that reads back as the same value (no ``1e-04`` surprises for ints)."""
    if spec.type is float:
        return f"{value:g}" if value not in (0, 0.0) else "0"
    return str(value)


class ConfigField(Widget):
    """A labelled editor for one ``section.name`` config field with live validation."""

    DEFAULT_CSS = """
    ConfigField {
        layout: horizontal;
        height: auto;
        width: 1fr;
        padding: 0 1 0 0;
        &.-long { layout: vertical; }
        & > .cf-row { height: auto; width: 1fr; }
        & .cf-label { width: 24; color: $text-muted; padding: 0 1 0 1; }
        & .cf-editor { width: 24; }
        & Input.cf-editor { background: $panel; }
        &.-long .cf-editor { width: 1fr; max-width: 100; }
        & Switch.cf-editor { border: none; height: 1; padding: 0; width: 6; background: $boost; }
        & Switch.cf-editor .switch--slider { color: $text-muted; background: $boost; }
        & Switch.cf-editor.-on .switch--slider { color: $success; }
        & .cf-switch-state { width: 18; padding-left: 1; color: $text-muted; }
        & .cf-note { width: 1fr; height: auto; padding: 0 0 0 2; color: $text-muted; display: none; }
        &.-long .cf-note { padding: 0 0 0 24; }
        &.-focused .cf-label { color: $accent; text-style: bold; }
        &.-error .cf-note { display: block; color: $text-error; }
        &.-error .cf-label { color: $text-error; }
    }
    """

    error: reactive[str] = reactive("", init=False)
    """Why the text in the editor is not a valid value; empty when it is."""

    class Changed(Message):
        """The user entered a valid value (it passed the declaration and the extra check)."""

        def __init__(self, field: ConfigField, value: Any) -> None:
            super().__init__()
            self.field = field
            self.value = value

        @property
        def control(self) -> ConfigField:
            return self.field

    class ErrorChanged(Message):
        """The field became invalid, or valid again."""

        def __init__(self, field: ConfigField) -> None:
            super().__init__()
            self.field = field

        @property
        def control(self) -> ConfigField:
            return self.field

    def __init__(self, path: str, value: Any, *, label: str | None = None, help: str | None = None,
                 check: Check | None = None, long: bool = False, placeholder: str = "") -> None:
        super().__init__(id=field_id(path), classes="-long" if long else "")
        self.spec = field_spec(path)
        self.value = value
        self._label = label or self.spec.label or self.spec.name.replace("_", " ")
        self._help = help or self.spec.help
        self._check = check
        self._placeholder = placeholder

    @property
    def path(self) -> str:
        return self.spec.path

    @property
    def valid(self) -> bool:
        return not self.error

    def compose(self) -> ComposeResult:
        # A long field puts its note under the editor; the others keep all on one row, and
        # without a wrapper, since a form holds dozens of these.
        if self.has_class("-long"):
            with Horizontal(classes="cf-row"):
                yield Label(self._label, classes="cf-label")
                yield self._make_editor()
        else:
            yield Label(self._label, classes="cf-label")
            yield self._make_editor()
            if self.spec.type is bool:
                yield Label(self._on_off(self.value), classes="cf-switch-state")
        yield Static(self._help, classes="cf-note", markup=False)

    @staticmethod
    def _on_off(value: Any) -> str:
        return "on" if value else "off"

    def _make_editor(self) -> Widget:
        spec = self.spec
        if spec.choices:
            options = [(choice, choice) for choice in spec.choices]
            return Select(options, value=self.value, allow_blank=False, compact=True, classes="cf-editor")
        if spec.type is bool:
            return Switch(bool(self.value), animate=False, classes="cf-editor")
        return Input(format_value(spec, self.value), placeholder=self._placeholder, compact=True,
                     select_on_focus=False, classes="cf-editor")

    @property
    def editor(self) -> Widget:
        return self.query_one(".cf-editor")

    def set_value(self, value: Any) -> None:
        """Show a value chosen elsewhere (a picker, a preset) and validate it like typing would."""
        editor = self.editor
        if isinstance(editor, Input):
            editor.value = format_value(self.spec, value) if not isinstance(value, str) else value
        elif isinstance(editor, Select):
            editor.value = value
        elif isinstance(editor, Switch):
            editor.value = bool(value)

    def revalidate(self) -> None:
        """Check the current text again, e.g. because the rule depends on another field."""
        editor = self.editor
        raw = editor.value if isinstance(editor, (Input, Select, Switch)) else self.value
        self._accept(raw)

    def watch_error(self, error: str) -> None:
        self.set_class(bool(error), "-error")
        editor = self.editor
        if isinstance(editor, Input):
            editor.set_class(bool(error), "-invalid")
        note = self.query_one(".cf-note", Static)
        note.update(f"✗ {error}" if error else self._help)
        self.post_message(self.ErrorChanged(self))

    @property
    def help(self) -> str:
        return self._help

    # A class rather than :focus-within, whose change does not always restyle the children.
    def on_descendant_focus(self) -> None:
        self.add_class("-focused")

    def on_descendant_blur(self) -> None:
        self.remove_class("-focused")

    def _accept(self, raw: Any) -> None:
        try:
            value = coerce_value(self.spec, raw)
        except ValueError as exc:
            self.error = str(exc)
            return
        reason = self._check(value) if self._check else None
        if reason:
            self.error = reason
            return
        self.error = ""
        if value != self.value:
            self.value = value
            self.post_message(self.Changed(self, value))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._accept(event.value)

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is not Select.NULL:
            self._accept(event.value)

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self.query_one(".cf-switch-state", Label).update(self._on_off(event.value))
        self._accept(event.value)
