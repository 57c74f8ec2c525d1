"""Step 1, Images: which folder, and what a scan of it found."""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.worker import get_current_worker
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Static

from loratui.data.report import concept_lines, display_name
from loratui.tui.wizard.base import WizardStep
from loratui.tui.wizard.dir_picker import PathPicker
from loratui.tui.wizard.fields import ConfigField

if TYPE_CHECKING:
    from loratui.data.scan import ImageRecord, ScanReport

_BAR = 10
# Typing a path fires a change per keystroke; scan once the typing stops.
_SCAN_DELAY = 0.3
_SCAN_INPUTS = ("data.images", "data.resolution", "data.bucket_step", "data.caption_extension")


class _Superseded(Exception):
    pass


def describe_repeats(report: ScanReport) -> str:
    """``10_person ×10 (4 images)`` for every N_name folder, so the epoch arithmetic is visible."""
    folders: dict[tuple[str, int], int] = defaultdict(int)
    for record in report.usable:
        if record.repeats > 1:
            top = record.rel.rsplit("/", 1)[0]
            folders[(top, record.repeats)] += 1
    return ", ".join(f"{name} ×{n} ({count} image{'s' if count != 1 else ''})"
                     for (name, n), count in sorted(folders.items()))


def summary_text(report: ScanReport, batch_size: int) -> str:
    usable, skipped = report.usable, report.skipped
    missing = len(report.missing_captions)
    line = (f"{len(report.records)} files · {len(usable)} usable · {len(skipped)} skipped · "
            f"{missing} without caption")
    repeats = describe_repeats(report)
    per_epoch = (f"{report.images_per_epoch} images/epoch → {report.steps_per_epoch(batch_size)} steps/epoch "
                 f"at batch size {batch_size}")
    concepts = concept_lines(report)
    if concepts:  # with concepts the per-concept lines say what the N_name summary would
        return "\n".join([line, per_epoch, *(c.strip() for c in concepts)])
    return "\n".join(filter(None, [line, per_epoch, f"repeats: {repeats}" if repeats else ""]))


def apply_validation_split(report: ScanReport, cfg: Any) -> str:
    """Mark the images validation.split holds out (the counts of an epoch leave them out, as the run
    will) and say which they are; empty when validation is off. A validation.folder is scanned only
    when the run starts."""
    from loratui.data.holdout import mark_held_out, plan_holdout

    report.held_out = []
    v = cfg.validation
    if v.folder:
        return f"validation: the images in {v.folder}, never trained on"
    if v.split <= 0:
        return ""
    plan = plan_holdout(report.usable, cfg)
    mark_held_out(report, plan)
    return plan.note



def histogram_text(report: ScanReport) -> str:
    buckets = report.bucket_histogram
    if not buckets:
        return "no buckets yet"
    top = max(buckets.values())
    lines = ["Buckets (images/epoch)"]
    for (w, h), count in buckets.items():
        bar = "█" * max(1, round(_BAR * count / top))
        lines.append(f"{w:>4}×{h:<4} {bar:<{_BAR}} {count}")
    return "\n".join(lines)


def record_cells(record: ImageRecord) -> tuple[str, ...]:
    size = f"{record.width}×{record.height}" if record.width else "—"
    bucket = f"{record.bucket[0]}×{record.bucket[1]}" if record.bucket else "—"
    if not record.usable:
        caption = "—"
    elif record.caption_path is None:
        caption = "class" if record.caption else "missing"  # a concept's class tokens caption it
    else:
        caption = "empty" if not record.caption else "✓"
    status = {"ok": "", "converted": "converted", "skipped": "SKIPPED"}.get(record.status, record.status)
    if record.problems and record.status == "ok":
        status = f"⚠ {len(record.problems)}"
    return (display_name(record.rel), size, f"×{record.repeats}", bucket, caption, status)


class ImagesStep(WizardStep):
    """Pick the images folder; a scan lists every image with its size, caption and problems."""

    title = "Images"

    BINDINGS = [
        Binding("ctrl+o", "browse", "Browse folders"),
        Binding("f5", "rescan", "Scan again"),
    ]

    class Scanned(Message):
        """A scan finished (or could not run); ``key`` says which settings it was for."""

        def __init__(self, key: tuple[Any, ...], report: ScanReport | None, failure: str = "") -> None:
            super().__init__()
            self.key = key
            self.report = report
            self.failure = failure

    class Progress(Message):
        def __init__(self, done: int, total: int) -> None:
            super().__init__()
            self.done = done
            self.total = total

    def __init__(self, state: Any) -> None:
        super().__init__(state)
        self.scanning = False
        self.failure = ""

    def compose_step(self) -> ComposeResult:
        with Horizontal(id="images-path-row"):
            yield self.field("data.images", long=True, check=self._check_folder, label="images folder")
            yield Button("Browse…", id="images-browse", compact=True, tooltip="ctrl+o", classes="-small")
        yield Static("", id="scan-summary", markup=False)
        with Horizontal(id="scan-body"):
            table: DataTable[str] = DataTable(id="scan-table", cursor_type="row", zebra_stripes=True)
            table.add_columns("image", "size", "rep", "bucket", "caption", "status")
            yield table
            with Vertical(id="scan-side"):
                yield Static("", id="scan-histogram", markup=False)
                yield Static("", id="scan-notices", markup=False)
        yield Static("", id="scan-detail", markup=False)

    @on(ConfigField.ErrorChanged, "#data-images")
    def _folder_validity(self, event: ConfigField.ErrorChanged) -> None:
        if event.field.error:
            # The listing below belongs to the last good folder; showing it now would mislead.
            self._clear("Choose a folder that exists to see its images.")
        elif self.state.report is not None and self.state.report_key == self.state.scan_key():
            self._show(self.state.report)  # back to the folder already scanned
        else:
            self._await_enter()

    def _check_folder(self, value: str) -> str | None:
        if not value.strip():
            return "name the folder that holds the images"
        path = self.state.resolve(value)
        if not path.exists():
            return f"there is no folder {path}; create it or press ctrl+o to browse"
        if not path.is_dir():
            return f"{path} is a file; give the folder that holds the images"
        return None

    # -- scanning -------------------------------------------------------------

    def entered(self) -> None:
        self._scan_if_due()

    def config_changed(self, path: str) -> None:
        if path == "data.images":
            # Not scanned while typing: on the way to /data/set, "/" alone is a folder too, and
            # walking the whole disk is not what anyone asked for.
            self._await_enter()
        elif path in _SCAN_INPUTS:
            self.debounce(_SCAN_DELAY, self._scan_if_due)
        elif (path in ("train.batch_size", "validation.split", "validation.folder", "train.seed")
              and self.state.report is not None and not self.scanning):
            self._show(self.state.report)

    def _await_enter(self) -> None:
        self._clear(f"Press Enter to scan {self.state.cfg.data.images} "
                    "(it is also scanned when you leave this step).")

    def _clear(self, summary: str) -> None:
        self.query_one("#scan-table", DataTable).clear()
        for part in ("#scan-histogram", "#scan-notices", "#scan-detail"):
            self.query_one(part, Static).update("")
        self.query_one("#scan-summary", Static).update(summary)

    @on(Input.Submitted, "#data-images Input")
    def _folder_submitted(self) -> None:
        self._scan_if_due()

    def left(self) -> None:
        if not self.query_one("#data-images", ConfigField).error and self.state.report_key != self.state.scan_key():
            self.action_rescan()

    def _scan_if_due(self) -> None:
        field = self.query_one("#data-images", ConfigField)
        if field.error:
            return
        if self.state.report_key != self.state.scan_key() or self.state.report is None:
            self.action_rescan()
        else:
            self._show(self.state.report)

    def action_rescan(self) -> None:
        if self.query_one("#data-images", ConfigField).error:
            return
        self.scanning = True
        self.query_one("#scan-summary", Static).update(f"scanning {self.state.cfg.data.images} …")
        self._scan(self.state.scan_key(), self.state.images_dir(), copy.deepcopy(self.state.cfg))

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def _scan(self, key: tuple[Any, ...], folder: Path, cfg: Any) -> None:
        worker = get_current_worker()

        def progress(done: int, total: int) -> None:
            if worker.is_cancelled:
                raise _Superseded  # a newer scan started; stop decoding this folder's images
            if done % 16 == 0 or done == total:
                self.post_message(self.Progress(done, total))

        try:
            report = self.state.services.scan(folder, cfg, progress, project_dir=self.state.project_dir)
        except _Superseded:
            return
        except Exception as exc:  # noqa: BLE001 - a scan bug must not take the wizard down
            self.post_message(self.Scanned(key, None, f"the scan stopped: {type(exc).__name__}: {exc}"))
            return
        self.post_message(self.Scanned(key, report))

    def on_images_step_progress(self, event: Progress) -> None:
        if self.scanning:
            self.query_one("#scan-summary", Static).update(f"scanning … {event.done}/{event.total} images")

    def on_images_step_scanned(self, event: Scanned) -> None:
        if event.key != self.state.scan_key():
            return  # the settings changed while it ran; a newer scan is on its way
        self.scanning = False
        self.failure = event.failure
        self.state.report = event.report
        self.state.report_key = event.key
        self._show(event.report)
        self.screen.refresh_step_bar()  # type: ignore[attr-defined]

    def _show(self, report: ScanReport | None) -> None:
        summary = self.query_one("#scan-summary", Static)
        table = self.query_one("#scan-table", DataTable)
        table.clear()
        summary.set_class(bool(self.failure or (report and (report.error or not report.usable))), "-error")
        if report is None:
            summary.update(self.failure or "not scanned yet")
            return
        if report.error:
            summary.update(report.error)
        else:
            holdout = apply_validation_split(report, self.state.cfg)  # first: the epoch counts leave them out
            summary.update("\n".join(filter(None, [summary_text(report, self.state.cfg.train.batch_size), holdout])))
        for record in report.records:
            table.add_row(*record_cells(record), key=record.rel)
        self.query_one("#scan-histogram", Static).update(histogram_text(report))
        self.query_one("#scan-notices", Static).update("\n".join(f"• {n}" for n in report.notices))
        self._detail(report.records[0] if report.records else None)

    @on(DataTable.RowHighlighted, "#scan-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        report = self.state.report
        if report is None:
            return
        for record in report.records:
            if record.rel == event.row_key.value:
                self._detail(record)
                return

    def _detail(self, record: ImageRecord | None) -> None:
        detail = self.query_one("#scan-detail", Static)
        if record is None:
            detail.update("")
            return
        notes = record.problems + record.info
        mode = f" · {record.mode}" if record.mode else ""
        head = f"{display_name(record.rel)}{mode}: " + ("no problems" if not notes else "")
        detail.update(head + "; ".join(notes))

    # -- browsing -------------------------------------------------------------

    @on(Button.Pressed, "#images-browse")
    def action_browse(self) -> None:
        start = self.state.images_dir()
        start = start if start.is_dir() else self.state.project_dir

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.query_one("#data-images", ConfigField).set_value(self.state.show_path(path))
                self.call_after_refresh(self._scan_if_due)  # once the new value has been taken

        self.app.push_screen(PathPicker(start.parent if start != self.state.project_dir else start,
                                        title="Choose the images folder"), chosen)

    # -- validity -------------------------------------------------------------

    def problems(self) -> list[str]:
        found = super().problems()
        if found:
            return found
        report = self.state.report
        if self.failure:
            found.append(f"data.images: {self.failure}")
        elif report is None or self.state.report_key != self.state.scan_key():
            found.append("data.images: the folder has not been scanned yet (F5 scans it)")
        elif report.error:
            found.append(f"data.images: {report.error}")
        elif not report.usable:
            found.append(f"data.images: none of the {len(report.records)} files can be trained")
        return found
