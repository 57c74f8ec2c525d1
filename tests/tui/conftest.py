"""Fixtures for driving the app: isolated settings, a fixed clock and time zone, a project, the fake engine."""

from __future__ import annotations

import asyncio
import inspect
import io
import shutil
import time
from pathlib import Path
from typing import Callable

import pytest
from rich.console import Console

from loratui.project import create_project
from loratui.tui.app import LoratuiApp

from .fake_engine import EPOCH, FakeEngine

FIXED_NOW = EPOCH + 754.0
"""What the injected clock says: 12 min 34 s after the fake run started."""
BACKEND = "ready (torch 2.13.0, CPU)"
SNAPSHOT_ROOT = Path("/tmp/loratui-snapshots")
"""Snapshot projects live at a fixed path, because paths are part of what the screen shows."""


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in a fresh event loop, without needing an asyncio plugin."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**kwargs))
    return True


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never touch the developer's own settings; checkpoint times are drawn in local time.
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "demo_lora"
    create_project(root)
    return root


@pytest.fixture
def snapshot_project(request: pytest.FixtureRequest) -> Path:
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "_")
    root = SNAPSHOT_ROOT / name / "demo_lora"
    shutil.rmtree(root.parent, ignore_errors=True)
    create_project(root)
    return root


@pytest.fixture
def make_app(project: Path) -> Callable[..., LoratuiApp]:
    def make(engine: FakeEngine | None = None, *, root: Path | None = None, mode: str = "open",
             theme: str | None = "dark") -> LoratuiApp:
        return LoratuiApp(root or project, mode=mode, engine=engine or FakeEngine(), theme=theme,  # type: ignore[arg-type]
                          clock=lambda: FIXED_NOW, warmup=lambda: BACKEND)
    return make


async def wait_until(pilot, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the app run until ``condition`` holds (engine events arrive from another thread)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


async def settle(pilot, screen) -> None:
    """Wait out the throttled redraw so the screen shows the latest state."""
    await pilot.pause(0.15)
    screen._draw()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()
    # Layout may settle a frame later (a scrollbar appearing changes widths): draw once more.
    screen._draw()
    await pilot.pause()
    # The events log scrolls to its newest line after a refresh; under load that can lag a frame.
    log = screen.query("#events")
    if log and log.first().size.height:
        await wait_until(pilot, lambda: log.first().scroll_y >= log.first().max_scroll_y)


def text_of(widget) -> str:
    """What a widget shows, as plain text."""
    rendered = widget.render()
    plain = getattr(rendered, "plain", None)
    if isinstance(plain, str):
        return plain
    console = Console(width=max(widget.size.width, 40), file=io.StringIO(), record=True, color_system=None)
    console.print(rendered)
    return console.export_text()


__all__ = ["FIXED_NOW", "BACKEND", "wait_until", "settle", "text_of", "FakeEngine", "asyncio"]
