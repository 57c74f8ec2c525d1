"""Help built from the bindings of the screen it was opened over, so it cannot go stale."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Label, Static


@dataclass(frozen=True)
class HelpRow:
    keys: str
    description: str
    enabled: bool = True


def help_rows(screen: Screen) -> list[HelpRow]:
    """One row per action of the screen and the app, keys for one action together.

    A focused widget's hidden bindings (scrolling, focus movement) are left out: they are the
    usual keys of any terminal program; the screen's own hidden ones are its extra keys."""
    grouped: dict[tuple[int, str], tuple[list[str], str, bool]] = {}
    for active in screen.active_bindings.values():
        binding = active.binding
        if not binding.description or binding.action in ("help", "app.help"):
            continue
        if not binding.show and active.node is not screen:
            continue
        group = grouped.setdefault((id(active.node), binding.action), ([], binding.description, active.enabled))
        key = screen.app.get_key_display(binding)
        if key not in group[0]:
            group[0].append(key)
    return [HelpRow(", ".join(keys), description, enabled) for keys, description, enabled in grouped.values()]


class HelpScreen(ModalScreen[None]):
    """Keys of the current screen with what they do; Escape, F1 or ? closes it."""

    BINDINGS = [Binding("escape,f1,question_mark,q", "close", "Close help")]

    def __init__(self, title: str, intro: str, rows: list[HelpRow]) -> None:
        super().__init__()
        self.title_text = title
        self.intro = intro
        self.rows = rows

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for row in self.rows:
            table.add_row(row.keys, row.description if row.enabled else f"{row.description} (not now)")
        table.add_row("F1, ?", "this help")
        table.add_row("^p", "command palette: change the theme (remembered), quit, …")
        with Vertical(classes="dialog -wide"):
            yield Label(f"Help — {self.title_text}", classes="dialog--title", markup=False)
            with VerticalScroll(classes="dialog--scroll"):
                yield Static(table, id="help-keys", classes="dialog--body")
                if self.intro:
                    yield Static(self.intro, classes="dialog--body", markup=False)
            yield Label("Esc, F1 or ? closes this help.", classes="dialog--hint")

    def action_close(self) -> None:
        self.dismiss(None)


def _paragraphs(text: str) -> str:
    """Rewrap a docstring-style text: lines join, blank lines separate paragraphs."""
    blocks = [" ".join(line.strip() for line in block.splitlines()) for block in text.strip().split("\n\n")]
    return "\n\n".join(b for b in blocks if b)


def help_for(screen: Screen) -> HelpScreen:
    intro = _paragraphs(getattr(screen, "HELP", None) or "")
    title = getattr(screen, "TITLE", None) or screen.__class__.__name__
    return HelpScreen(str(title), intro.strip(), help_rows(screen))
