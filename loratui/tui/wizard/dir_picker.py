"""A modal for picking a folder (or a model file) from the keyboard."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Footer, Static


class PickerTree(DirectoryTree):
    """Folders only (plus files with the wanted suffixes); hidden entries left out."""

    def __init__(self, path: Path, suffixes: tuple[str, ...] = (), **kwargs: object) -> None:
        super().__init__(path, **kwargs)  # type: ignore[arg-type]
        self.suffixes = suffixes

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        for path in paths:
            if path.name.startswith("."):
                continue
            try:
                if path.is_dir() or path.suffix.lower() in self.suffixes:
                    yield path
            except OSError:
                continue  # unreadable entries are simply not offered


class PathPicker(ModalScreen["Path | None"]):
    """Browse with the arrows, space opens a folder, enter chooses; dismisses with the path or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("backspace", "up", "Parent folder"),
        Binding("ctrl+o", "choose", "Choose highlighted"),
    ]

    DEFAULT_CSS = """
    PathPicker { align: center middle; }
    PathPicker > Vertical {
        width: 90%; max-width: 100; height: 85%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    PathPicker #picker-title { color: $text-muted; }
    PathPicker PickerTree { height: 1fr; background: $surface; }
    PathPicker #picker-chosen { color: $accent; height: auto; }
    PathPicker #picker-buttons { height: 1; align-horizontal: right; }
    PathPicker #picker-buttons Button { margin-left: 2; }
    """

    def __init__(self, start: Path, *, title: str = "Choose a folder", suffixes: tuple[str, ...] = ()) -> None:
        super().__init__()
        start = Path(start)
        while not start.is_dir() and start != start.parent:
            start = start.parent
        self.root = start
        self.heading = title
        self.suffixes = suffixes
        self.highlighted: Path = start

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"{self.heading}  ·  space opens a folder, enter chooses, backspace goes up",
                         id="picker-title", markup=False)
            yield PickerTree(self.root, self.suffixes, id="picker-tree")
            yield Static(str(self.root), id="picker-chosen", markup=False)
            with Horizontal(id="picker-buttons"):
                yield Button("Choose", id="picker-choose", variant="primary", compact=True)
                yield Button("Cancel", id="picker-cancel", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(PickerTree).focus()

    @on(DirectoryTree.NodeHighlighted)
    def _highlighted(self, event: DirectoryTree.NodeHighlighted) -> None:
        data = event.node.data
        if data is not None:
            self.highlighted = Path(data.path)
            self.query_one("#picker-chosen", Static).update(str(self.highlighted))

    @on(DirectoryTree.DirectorySelected)
    @on(DirectoryTree.FileSelected)
    def _selected(self, event: DirectoryTree.DirectorySelected | DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(Path(event.path))

    @on(Button.Pressed, "#picker-choose")
    def action_choose(self) -> None:
        self.dismiss(self.highlighted)

    @on(Button.Pressed, "#picker-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_up(self) -> None:
        tree = self.query_one(PickerTree)
        parent = Path(tree.path).parent
        if parent != Path(tree.path):
            tree.path = parent
            self.highlighted = parent
            self.query_one("#picker-chosen", Static).update(str(parent))
