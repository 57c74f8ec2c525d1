"""The dataset report: what the wizard's Images step shows and what
``loratui check DIR`` prints: a rich renderable for a terminal, one line per
problem for pipes and logs, and JSON for scripts."""

from __future__ import annotations

from math import gcd
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from loratui.data.scan import ImageRecord, ScanReport

_BAR_WIDTH = 30


def display_name(rel: str) -> str:
    """A file name safe to print on one terminal line.

    Control characters (a newline in a file name happens) become escapes, and
    bytes that are not valid UTF-8 show as \\x.. instead of crashing print().
    """
    out = []
    for ch in rel:
        if ch in "\n\r\t" or ord(ch) < 32 or ord(ch) == 127:
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    text = "".join(out)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _aspect(bucket: tuple[int, int]) -> str:
    w, h = bucket
    g = gcd(w, h)
    return f"{w // g}:{h // g}"


def summary_line(report: ScanReport) -> str:
    total = len(report.records)
    usable = report.usable
    converted = sum(1 for r in usable if r.status == "converted")
    parts = [
        f"{total} image{'s' if total != 1 else ''}",
        f"{len(usable)} usable" + (f" ({converted} converted)" if converted else ""),
        f"{len(report.skipped)} skipped",
        f"{report.images_per_epoch} images/epoch",
        f"{report.steps_per_epoch(1)} steps/epoch at batch size 1",
    ]
    missing = len(report.missing_captions)
    if missing:
        parts.append(f"{missing} without caption")
    return ", ".join(parts)


def _shows_concepts(report: ScanReport) -> bool:
    return len(report.concepts) > 1 or any(c.is_reg for c in report.concepts)


def concept_rows(report: ScanReport) -> list[tuple[str, str, int, int, int, str]]:
    """(name, kind, usable images, repeats, images per epoch, share of the epoch) per concept."""
    from loratui.data.concepts import concept_counts

    rows = []
    for count in concept_counts(report):
        c = count.concept
        kind = "reg" if c.is_reg else "train"
        rows.append((c.name, kind, count.usable, c.repeats, count.per_epoch, f"{count.share:.0%}"))
    return rows


def concept_lines(report: ScanReport) -> list[str]:
    if not _shows_concepts(report):
        return []
    lines = ["Concepts (images per epoch, repeats and regularization balancing included):"]
    for name, kind, usable, repeats, per_epoch, share in concept_rows(report):
        lines.append(f"  {display_name(name)} [{kind}] {usable} images × {repeats} repeats → {per_epoch}/epoch ({share})")
    return lines


def _size(r: ImageRecord) -> str:
    return f"{r.width}×{r.height}" if r.width else "—"


def _bucket(r: ImageRecord) -> str:
    return f"{r.bucket[0]}×{r.bucket[1]}" if r.bucket else "—"


def _verdict(report: ScanReport) -> str:
    code = report.exit_code
    if code == 0:
        return "Every image can be trained."
    if code == 1:
        return "Trainable: the skipped images are left out."
    return "Nothing here can be trained."


def _bucket_label(bucket: tuple[int, int]) -> str:
    return f"{bucket[0]}×{bucket[1]}"


_STATUS_STYLE = {"ok": "", "converted": "yellow", "skipped": "bold red"}


def render_report(report: ScanReport) -> RenderableType:
    """The report for a rich console or a Textual Static."""
    title = Text.assemble(
        ("Dataset ", "bold"), (str(report.images_dir), "bold"), f" at {report.resolution} px"
    )
    if report.error:
        return Group(title, Text(f"Error: {report.error}", style="bold red"))
    parts: list[RenderableType] = [title, Text(summary_line(report))]
    if _shows_concepts(report):
        parts.append(_concept_table(report))
    problems = _problem_table(report)
    if problems is not None:
        parts.append(problems)
    if report.notices:
        notices = Text()
        for n in report.notices:
            notices.append(f"• {display_name(n)}\n")
        notices.rstrip()
        parts.append(notices)
    histogram = _histogram_table(report)
    if histogram is not None:
        parts.append(histogram)
    style = {0: "green", 1: "yellow", 2: "bold red"}[report.exit_code]
    parts.append(Text(_verdict(report), style=style))
    return Group(*parts)


def _concept_table(report: ScanReport) -> Table:
    table = Table(title="Concepts (images per epoch)", title_justify="left", box=None)
    for name, justify in (("Concept", "left"), ("Kind", "left"), ("Images", "right"), ("Repeats", "right"),
                          ("Per epoch", "right"), ("Share", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name, kind, usable, repeats, per_epoch, share in concept_rows(report):
        table.add_row(display_name(name), Text(kind, style="magenta" if kind == "reg" else ""), str(usable),
                      str(repeats), str(per_epoch), share)
    return table


def _problem_table(report: ScanReport) -> Table | None:
    rows = [r for r in report.records if r.problems or r.info]
    if not rows:
        return None
    table = Table(title="Problems", title_justify="left", expand=False, show_lines=False)
    table.add_column("File", overflow="fold")
    table.add_column("Status")
    table.add_column("Size", justify="right")
    table.add_column("Bucket", justify="right")
    table.add_column("Problem", overflow="fold")
    for r in rows:
        style = _STATUS_STYLE.get(r.status, "")
        messages = [(p, "") for p in r.problems] + [(i, "dim") for i in r.info]
        for index, (message, message_style) in enumerate(messages):
            first = index == 0
            table.add_row(
                display_name(r.rel) if first else "",
                Text(r.status, style=style) if first else "",
                _size(r) if first else "",
                _bucket(r) if first else "",
                Text(display_name(message), style=message_style),
            )
    return table


def _histogram_table(report: ScanReport) -> Table | None:
    histogram = report.bucket_histogram
    if not histogram:
        return None
    table = Table(title="Buckets (images per epoch)", title_justify="left", box=None)
    table.add_column("Bucket", justify="right")
    table.add_column("Aspect", justify="right")
    table.add_column("Images", justify="right")
    table.add_column("")
    peak = max(histogram.values())
    for bucket, count in histogram.items():
        bar = "█" * max(1, round(count / peak * _BAR_WIDTH))
        table.add_row(_bucket_label(bucket), _aspect(bucket), str(count), Text(bar, style="cyan"))
    return table


def _project_path(path: Path, project_dir: Path | None) -> str:
    """A path as the user would type it from the project folder (absolute when outside it).

    Only the folder is resolved: a file may be a broken or looping link, reported as such."""
    folder, name = path.parent, path.name
    if project_dir is not None:
        try:
            folder = path.parent.resolve().relative_to(project_dir.resolve())
        except (ValueError, OSError, RuntimeError):
            pass
    return (folder / name).as_posix()


def _folder_path(report: ScanReport, project_dir: Path | None) -> str:
    if project_dir is not None:
        try:
            return report.images_dir.resolve().relative_to(project_dir.resolve()).as_posix()
        except (ValueError, OSError, RuntimeError):
            pass
    return str(report.images_dir)


def problem_lines(report: ScanReport, project_dir: Path | None = None) -> list[str]:
    """The report for pipes, files and CI logs: one ``PATH: STATUS: PROBLEM`` line per problem, with
    the whole path relative to the project, so ``grep NAME`` finds every line about a file."""
    if report.error:
        return [f"error: {report.error}"]
    lines = [f"dataset: {_folder_path(report, project_dir)} at {report.resolution} px",
             f"summary: {summary_line(report)}"]
    lines += [f"concept: {line.strip()}" for line in concept_lines(report)[1:]]
    for r in report.records:
        name = display_name(_project_path(r.path, project_dir))
        lines.extend(f"{name}: {r.status}: {display_name(p)}" for p in r.problems)
        lines.extend(f"{name}: {r.status}: note: {display_name(i)}" for i in r.info)
    lines.extend(f"notice: {display_name(n)}" for n in report.notices)
    for bucket, count in report.bucket_histogram.items():
        lines.append(f"bucket: {_bucket_label(bucket)} ({_aspect(bucket)}) {count} images/epoch")
    lines.append(f"verdict: {_verdict(report)}")
    return lines


def report_json(report: ScanReport, project_dir: Path | None = None, *, batch_size: int = 1) -> dict[str, Any]:
    """The report for scripts: the summary and one object per file."""
    files = [{
        "path": _project_path(r.path, project_dir),
        "status": r.status,
        "width": r.width,
        "height": r.height,
        "mode": r.mode,
        "bucket": list(r.bucket) if r.bucket else None,
        "repeats": r.repeats,
        "caption": r.caption_path is not None,
        "problems": list(r.problems),
        "notes": list(r.info),
    } for r in report.records]
    summary: dict[str, Any] = {
        "images_dir": _folder_path(report, project_dir),
        "resolution": report.resolution,
        "error": report.error,
        "images": len(report.records),
        "usable": len(report.usable),
        "converted": sum(1 for r in report.usable if r.status == "converted"),
        "skipped": len(report.skipped),
        "missing_captions": len(report.missing_captions),
        "images_per_epoch": report.images_per_epoch,
        "batch_size": batch_size,
        "steps_per_epoch": report.steps_per_epoch(batch_size) if report.usable else 0,
        "buckets": [{"bucket": list(b), "images": n} for b, n in report.bucket_histogram.items()],
        "concepts": [{"name": name, "kind": kind, "images": usable, "repeats": repeats, "per_epoch": per_epoch,
                      "share": share} for name, kind, usable, repeats, per_epoch, share in concept_rows(report)]
        if report.concepts else [],
        "notices": list(report.notices),
        "exit_code": report.exit_code,
        "verdict": _verdict(report),
    }
    return {"summary": summary, "files": files}
