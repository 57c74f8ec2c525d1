"""One line above the footer: the run's phase as a badge, the latest status, and the backend."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import Label

BADGES = {
    "idle": "○ IDLE",
    "starting": "◌ STARTING",
    "training": "▶ TRAINING",
    "pausing": "◌ PAUSING",
    "paused": "❚❚ PAUSED",
    "stopping": "◌ STOPPING",
    "finished": "✔ FINISHED",
    "failed": "✖ FAILED",
}


class StatusBar(Horizontal):
    """The badge's colour comes from a ``-<phase>`` class, so themes decide it."""

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
        background: $panel;
    }
    StatusBar > #status-badge {
        padding: 0 1;
        text-style: bold;
        background: $secondary;
        color: $text;
    }
    StatusBar.-training > #status-badge { background: $primary; color: $text; }
    StatusBar.-paused > #status-badge, StatusBar.-pausing > #status-badge,
    StatusBar.-stopping > #status-badge { background: $warning; color: $background; }
    StatusBar.-finished > #status-badge { background: $success; color: $background; }
    StatusBar.-failed > #status-badge { background: $error; color: $text; }
    StatusBar > #status-text {
        width: 1fr;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    StatusBar > #status-backend {
        color: $text-muted;
        padding: 0 1;
        text-wrap: nowrap;
    }
    """

    phase: reactive[str] = reactive("idle")
    """One of the keys of BADGES."""
    text: reactive[str] = reactive("")
    """The latest status sentence."""

    def compose(self) -> ComposeResult:
        yield Label(BADGES["idle"], id="status-badge")
        yield Label("", id="status-text", markup=False)
        yield Label("", id="status-backend", markup=False)

    def on_mount(self) -> None:
        self.add_class(f"-{self.phase}")
        if hasattr(self.app, "backend_status"):
            self.watch(self.app, "backend_status", self._backend_changed)

    def _backend_changed(self, value: str) -> None:
        self.query_one("#status-backend", Label).update(value)

    def watch_phase(self, old: str, new: str) -> None:
        self.remove_class(f"-{old}")
        self.add_class(f"-{new}")
        self.query_one("#status-badge", Label).update(BADGES.get(new, new.upper()))

    def watch_text(self, value: str) -> None:
        self.query_one("#status-text", Label).update(value)
