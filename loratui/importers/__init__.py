"""Bringing another trainer's configuration over: ``loratui import DIR --kohya ARGS.toml``.

An importer turns the other program's files into a ProjectConfig and an ImportReport that says,
key by key, what was mapped, what was changed on the way (and why), and what was ignored. The
project is written only from a config that validates, so the file it leaves always loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImportReport:
    mapped: list[tuple[str, str, Any]] = field(default_factory=list)  # (their key, our field, value)
    changed: list[tuple[str, str]] = field(default_factory=list)  # (their key, what was done and why)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (their key, why)

    def map(self, source: str, target: str, value: Any) -> None:
        self.mapped.append((source, target, value))

    def change(self, source: str, why: str) -> None:
        self.changed.append((source, why))

    def ignore(self, source: str, why: str) -> None:
        self.ignored.append((source, why))

    def lines(self) -> list[str]:
        out = [f"Mapped ({len(self.mapped)}):"]
        out += [f"  {src} → {dst} = {val!r}" for src, dst, val in self.mapped]
        if self.changed:
            out.append(f"Changed ({len(self.changed)}):")
            out += [f"  {src}: {why}" for src, why in self.changed]
        if self.ignored:
            out.append(f"Ignored ({len(self.ignored)}):")
            out += [f"  {src}: {why}" for src, why in self.ignored]
        return out
