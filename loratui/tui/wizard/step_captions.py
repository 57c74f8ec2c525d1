"""Step 2, Captions: browse the images, edit each caption beside a preview, bulk prefixes;
caption them with a model (F5), edit them in bulk (F6), review them one by one (F4)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, OptionList, Static, TextArea

from loratui.data.captions import apply_prefix, count_tokens_estimate, find_caption, has_trigger, write_caption
from loratui.data.report import display_name
from loratui.tui.widgets.image_view import ImageView
from loratui.tui.wizard.base import WizardStep

if TYPE_CHECKING:
    from loratui.data.scan import ImageRecord, ScanReport

# Each keystroke edits the caption; write once the typing pauses, and at once
# when the user moves to another image or step.
_WRITE_DELAY = 0.6


def caption_mark(record: ImageRecord) -> str:
    if record.caption_path is None:
        return "✗"
    return "○" if not record.caption else "✓"


def caption_target(record: ImageRecord, extension: str) -> Path:
    """Where this image's caption is, or will be written."""
    return record.caption_path or find_caption(record.path, extension).path


class CaptionsStep(WizardStep):
    """Edit captions next to a preview of the image; ✗ marks images without a caption file."""

    title = "Captions"
    first_focus = "#caption-list"

    BINDINGS = [
        Binding("f3", "next_uncaptioned", "Next uncaptioned"),
        Binding("f4", "review_next", "Review", tooltip="The next picture with its caption, ready to edit"),
        Binding("f5", "caption_images", "Caption", tooltip="Caption the images with a model"),
        Binding("f6", "caption_tools", "Tools", tooltip="Tag counts, find/replace, remove tags, trigger word, undo"),
    ]

    class PrefixApplied(Message):
        def __init__(self, changed: dict[str, str], failures: list[str]) -> None:
            super().__init__()
            self.changed = changed
            self.failures = failures

    def __init__(self, state: Any) -> None:
        super().__init__(state)
        self._shown_report: ScanReport | None = None
        self._records: list[ImageRecord] = []
        self.current: ImageRecord | None = None
        self._caption_settings: Any = None

    def compose_step(self) -> ComposeResult:
        with Horizontal(id="captions-settings"):
            yield self.field("data.trigger_word", label="trigger word", placeholder="e.g. sks")
            yield self.field("data.caption_extension", label="extension")
        with Horizontal(id="captions-body"):
            yield OptionList(id="caption-list")
            with Vertical(id="caption-editor"):
                yield ImageView(id="caption-preview")
                yield Static("", id="caption-file", markup=False)
                yield TextArea(id="caption-text", soft_wrap=True, tab_behavior="focus")
        with Horizontal(id="prefix-row"):
            yield Label("prefix, all captions", classes="row-label")
            yield Input(placeholder="e.g. photo of sks", id="prefix-input", compact=True)
            yield Button("Add", id="prefix-add", compact=True, classes="-small")
            yield Button("Remove", id="prefix-remove", compact=True, classes="-small")
        yield Static("", id="captions-status", markup=False)

    # -- the list -------------------------------------------------------------

    def entered(self) -> None:
        report = self.state.report
        if report is not self._shown_report:
            self._load(report)
        self._refresh_trigger_count()

    def config_changed(self, path: str) -> None:
        if path == "data.trigger_word":
            self._refresh_trigger_count()

    def _load(self, report: ScanReport | None) -> None:
        self._shown_report = report
        self._records = list(report.usable) if report else []
        options = self.query_one("#caption-list", OptionList)
        options.clear_options()
        options.add_options(self._label(r) for r in self._records)
        if self._records:
            options.highlighted = 0
            self._select(self._records[0])
        else:
            self.current = None
            self.query_one("#caption-file", Static).update(
                "No images yet: choose a folder with images on step 1." if not report or not report.records
                else "None of the images can be trained; see step 1.")
            self.query_one("#caption-preview", ImageView).path = None

    def _label(self, record: ImageRecord) -> str:
        return f"{caption_mark(record)} {display_name(record.rel)}"

    @on(OptionList.OptionHighlighted, "#caption-list")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if 0 <= event.option_index < len(self._records):
            self._select(self._records[event.option_index])

    def _select(self, record: ImageRecord) -> None:
        if record is self.current:
            return
        self.flush()
        self.current = record
        self.query_one("#caption-preview", ImageView).path = record.path
        self.query_one("#caption-text", TextArea).load_text(record.caption or "")
        self._describe(record)

    def _describe(self, record: ImageRecord) -> None:
        target = caption_target(record, self.state.cfg.data.caption_extension)
        where = target.name if record.caption_path else f"no caption yet; typing creates {target.name}"
        tokens = count_tokens_estimate(record.caption or "")
        self.query_one("#caption-file", Static).update(
            f"{record.width}×{record.height} · {where} · ~{tokens}/75 tokens")

    def action_next_uncaptioned(self) -> None:
        """Jump to the next image without a caption file, wrapping around."""
        if not self._records:
            return
        start = self._records.index(self.current) if self.current in self._records else -1
        count = len(self._records)
        for offset in range(1, count + 1):
            index = (start + offset) % count
            if self._records[index].caption_path is None:
                self.query_one("#caption-list", OptionList).highlighted = index
                self._select(self._records[index])
                self.query_one("#caption-text", TextArea).focus()
                return
        self._status("Every image has a caption file.")

    def action_review_next(self) -> None:
        """The review pass: the next picture with its caption ready to edit (the edit is saved on moving on)."""
        if not self._records:
            return
        index = (self._records.index(self.current) + 1) % len(self._records) if self.current in self._records else 0
        self.query_one("#caption-list", OptionList).highlighted = index
        self._select(self._records[index])
        self.query_one("#caption-text", TextArea).focus()
        self._status(f"reviewing {index + 1} of {len(self._records)}: edit the caption, F4 for the next picture")

    # -- captioning with a model, and the bulk tools --------------------------

    def action_caption_images(self) -> None:
        from loratui.tui.wizard.caption_run import CaptionRunScreen, CaptionSettings

        self.flush()
        self.screen.save_now()  # the panel reads the trigger word and folders from loratui.toml
        if self._caption_settings is None:
            self._caption_settings = CaptionSettings()
        self.app.push_screen(CaptionRunScreen(self.state.project_dir, self._caption_settings), self._captions_changed)

    def action_caption_tools(self) -> None:
        from loratui.tui.wizard.caption_tools import CaptionToolsScreen

        self.flush()
        self.screen.save_now()
        self.app.push_screen(CaptionToolsScreen(self.state.project_dir), self._captions_changed)

    def _captions_changed(self, changed: bool | None) -> None:
        if not changed:
            return
        from loratui.data.captions import read_caption

        extension = self.state.cfg.data.caption_extension
        for record in self._records:
            found = find_caption(record.path, extension)
            try:
                record.caption = read_caption(found.path).text if found.exists else None
            except OSError:
                continue
            record.caption_path = found.path if found.exists else None
            self._relabel(record)
        if self.current is not None:
            self.query_one("#caption-text", TextArea).load_text(self.current.caption or "")
            self._describe(self.current)
        self._refresh_trigger_count()

    # -- editing --------------------------------------------------------------

    @on(TextArea.Changed, "#caption-text")
    def _edited(self, event: TextArea.Changed) -> None:
        record = self.current
        if record is None or event.text_area.text == (record.caption or ""):
            return
        self.debounce(_WRITE_DELAY, self.flush)

    def flush(self) -> None:
        """Write the caption being edited, if it changed; atomically, so a crash keeps old or new."""
        self.cancel_debounce()
        record = self.current
        if record is None:
            return
        text = self.query_one("#caption-text", TextArea).text.strip()
        if text == (record.caption or "") and (record.caption_path is not None or not text):
            return
        target = caption_target(record, self.state.cfg.data.caption_extension)
        try:
            write_caption(target, text)
        except OSError as exc:
            self._status(f"cannot write {target}: {exc.strerror or exc}", error=True)
            return
        record.caption, record.caption_path = text, target
        self._relabel(record)
        self._describe(record)
        self._status(f"wrote {self.state.show_path(target)}")

    def _relabel(self, record: ImageRecord) -> None:
        if record in self._records:
            index = self._records.index(record)
            self.query_one("#caption-list", OptionList).replace_option_prompt_at_index(index, self._label(record))

    def left(self) -> None:
        self.flush()

    # -- prefix ---------------------------------------------------------------

    @on(Button.Pressed, "#prefix-add")
    def _add_prefix(self) -> None:
        self._prefix(remove=False)

    @on(Button.Pressed, "#prefix-remove")
    def _remove_prefix(self) -> None:
        self._prefix(remove=True)

    @on(Input.Submitted, "#prefix-input")
    def _prefix_submitted(self) -> None:
        self._prefix(remove=False)

    def _prefix(self, *, remove: bool) -> None:
        prefix = self.query_one("#prefix-input", Input).value.strip()
        if not prefix:
            self._status("Type the prefix first, e.g. 'photo of sks'.", error=True)
            return
        self.flush()
        jobs = [(r.rel, r.caption_path, r.caption or "") for r in self._records if r.caption_path is not None]
        self._apply_prefix(jobs, prefix, remove)

    @work(thread=True, exclusive=True, group="prefix", exit_on_error=False)
    def _apply_prefix(self, jobs: list[tuple[str, Path, str]], prefix: str, remove: bool) -> None:
        changed: dict[str, str] = {}
        failures: list[str] = []
        for rel, path, text in jobs:
            new = apply_prefix(text, prefix, remove=remove)
            if new == text:
                continue
            try:
                write_caption(path, new)
            except OSError as exc:
                failures.append(f"{path.name}: {exc.strerror or exc}")
                continue
            changed[rel] = new
        self.post_message(self.PrefixApplied(changed, failures))

    def on_captions_step_prefix_applied(self, event: PrefixApplied) -> None:
        for record in self._records:
            if record.rel in event.changed:
                record.caption = event.changed[record.rel]
                self._relabel(record)
        if self.current is not None and self.current.rel in event.changed:
            self.query_one("#caption-text", TextArea).load_text(self.current.caption or "")
            self._describe(self.current)
        skipped = sum(1 for r in self._records if r.caption_path is None)
        message = f"changed {len(event.changed)} caption file(s)"
        if skipped:
            message += f"; {skipped} image(s) without a caption file left alone"
        if event.failures:
            message += f"; could not write {len(event.failures)}: {event.failures[0]}"
        self._status(message, error=bool(event.failures))
        self._refresh_trigger_count()

    # -- status ---------------------------------------------------------------

    def _refresh_trigger_count(self) -> None:
        trigger = self.state.cfg.data.trigger_word.strip()
        if not trigger or not self._records:
            return
        lacking = sum(1 for r in self._records if not has_trigger(r.caption or "", trigger))
        if lacking:
            self._status(f"{lacking} of {len(self._records)} captions lack '{trigger}'; "
                         "training puts it in front of them")
        else:
            self._status(f"every caption contains '{trigger}'")

    def _status(self, text: str, *, error: bool = False) -> None:
        status = self.query_one("#captions-status", Static)
        status.update(text)
        status.set_class(error, "-error")
