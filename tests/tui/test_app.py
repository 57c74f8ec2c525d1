"""The app shell: start screen, new/open project, wizard hand-off, themes, backend status, layout."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from textual.widgets import Input, OptionList

from loratui.config import CONFIG_NAME
from loratui.project import create_project
from loratui.settings import Settings, load_settings, save_settings, settings_path
from loratui.tui.app import LoratuiApp
from loratui.tui.dashboard import DashboardScreen
from loratui.tui.modals import ChoiceModal, ErrorModal, FolderPrompt
from loratui.tui.start_screen import StartScreen
from loratui.tui.widgets.image_view import ImageView

from .conftest import BACKEND, FIXED_NOW, settle, text_of, wait_until
from .fake_engine import FakeEngine


def quick_wizard(project_dir: Path):
    """The real wizard with instant model probing and estimates (the shell is under test, not it)."""
    from loratui.tui.wizard import WizardScreen

    from .run_wizard import fake_services

    return WizardScreen(project_dir, services=fake_services())


def start_app(engine: FakeEngine | None = None, **kwargs) -> LoratuiApp:
    kwargs.setdefault("warmup", lambda: BACKEND)
    kwargs.setdefault("wizard", quick_wizard)
    return LoratuiApp(engine=engine or FakeEngine(), clock=lambda: FIXED_NOW, **kwargs)


async def type_path(pilot, path: Path) -> None:
    field = pilot.app.screen.query_one("#folder-input", Input)
    field.value = str(path)
    field.focus()
    await pilot.press("enter")


async def test_start_screen_lists_recent_projects_and_opens_one(project, tmp_path):
    settings = Settings()
    settings.add_recent(tmp_path / "gone")
    settings.add_recent(project)
    save_settings(settings)
    app = start_app()
    async with app.run_test(size=(100, 30)) as pilot:
        assert isinstance(app.screen, StartScreen)
        options = app.screen.query_one("#recent", OptionList)
        assert [options.get_option_at_index(i).id for i in range(options.option_count)] == [
            str(project.resolve()), str((tmp_path / "gone").resolve())]
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        assert app.screen.project_dir == project.resolve()


async def test_new_project_creates_the_folder_and_opens_the_wizard(tmp_path):
    from loratui.tui.wizard import WizardScreen

    target = tmp_path / "new_lora"
    app = start_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        assert isinstance(app.screen, FolderPrompt)
        await type_path(pilot, target)
        await wait_until(pilot, lambda: isinstance(app.screen, WizardScreen))
        assert (target / CONFIG_NAME).is_file()
        assert load_settings().recent == [str(target.resolve())]


async def test_opening_a_plain_folder_offers_to_make_it_a_project(tmp_path):
    from loratui.tui.wizard import WizardScreen

    plain = tmp_path / "photos"
    plain.mkdir()
    app = start_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("o")
        await type_path(pilot, plain)
        assert isinstance(app.screen, ChoiceModal)
        await pilot.press("y")
        await wait_until(pilot, lambda: isinstance(app.screen, WizardScreen))
        assert (plain / CONFIG_NAME).is_file()


async def test_open_mode_on_a_folder_without_config_explains(tmp_path):
    app = start_app(project_dir=tmp_path, mode="open")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, ErrorModal)
        assert "loratui new" in app.screen.message
        await pilot.press("escape")
        assert isinstance(app.screen, StartScreen)


async def test_wizard_start_opens_the_dashboard_and_trains_once(project):
    from loratui.tui.wizard import WizardScreen

    engine = FakeEngine(30, hold_at=4)
    app = start_app(engine, project_dir=project, mode="new")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, WizardScreen))
        wizard = app.screen
        # What the wizard's Start does: post Start to the app, then dismiss with the folder.
        app.post_message(WizardScreen.Start(wizard.project_dir))
        wizard.dismiss(wizard.project_dir)
        await wait_until(pilot, lambda: engine.holding.is_set())
        await pilot.pause(0.1)
        assert isinstance(app.screen, DashboardScreen)
        assert len(engine.calls) == 1 and engine.calls[0]["resume"] is False
        engine.release()


async def test_theme_flag_is_applied_and_remembered(project):
    app = start_app(theme="light")
    async with app.run_test(size=(80, 24)):
        assert app.theme == "light"
    assert load_settings().theme == "light"
    again = start_app()
    async with again.run_test(size=(80, 24)):
        assert again.theme == "light"
        again.theme = "high-contrast"  # as the command palette's theme picker does
    assert load_settings().theme == "high-contrast"


async def test_unknown_theme_falls_back_to_dark_and_says_so():
    app = start_app(theme="no-such-theme")
    async with app.run_test(size=(80, 24)):
        assert app.theme == "dark"
        assert any("no-such-theme" in n.message for n in app._notifications)


async def test_backend_status_goes_from_loading_to_ready():
    gate = threading.Event()

    def slow_warmup() -> str:
        gate.wait(5)
        return "ready (torch 9.9, CUDA: Test GPU)"

    app = start_app(warmup=slow_warmup)
    async with app.run_test(size=(100, 30)) as pilot:
        backend = app.screen.query_one("#status-backend")
        await wait_until(pilot, lambda: text_of(backend) == "loading torch…")
        gate.set()
        await wait_until(pilot, lambda: text_of(backend) == "ready (torch 9.9, CUDA: Test GPU)")


async def test_a_failing_warmup_is_reported_not_raised():
    def broken() -> str:
        raise ImportError("libcuda.so.1: cannot open shared object file")

    app = start_app(warmup=broken)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: "torch not usable" in app.backend_status)
        assert "libcuda" in app.backend_status


def test_importing_the_tui_does_not_import_torch():
    code = ("import sys, loratui.tui.app; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


async def test_small_terminal_stacks_the_panes_with_every_key_in_the_footer(make_app):
    engine = FakeEngine(40, hold_at=10)
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await pilot.press("t")
        await wait_until(pilot, lambda: engine.holding.is_set())
        await settle(pilot, screen)
        assert screen.has_class("-narrow") and screen.has_class("-short")
        run, loss = screen.query_one("#run-pane").region, screen.query_one("#loss-pane").region
        assert run.x == loss.x and run.y < loss.y
        assert run.bottom <= 22  # the numbers are on screen without scrolling (header + status + footer)
        footer_keys = {w.key for w in screen.query("FooterKey")}
        assert {"t", "p", "s", "c", "x", "l", "e", "q"} <= footer_keys
        assert all(w.region.right <= 80 for w in screen.query("FooterKey"))
        engine.release()


async def test_large_terminal_puts_panes_side_by_side(make_app):
    app = make_app(FakeEngine(5))
    async with app.run_test(size=(200, 50)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert screen.has_class("-wide") and screen.has_class("-tall")
        left, right = screen.query_one("#dash-left").region, screen.query_one("#dash-right").region
        assert left.y == right.y and left.right <= right.x
        assert screen.query_one("#sample-pane").region.height >= 10


async def test_no_color_still_draws_the_dashboard(make_app, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    engine = FakeEngine(20, hold_at=10, sample_every=5)
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.no_color
        await pilot.press("t")
        await wait_until(pilot, lambda: engine.holding.is_set())
        await settle(pilot, app.screen)
        svg = app.export_screenshot()
        assert "10&#160;/&#160;20" in svg
        assert "images need colour" in text_of(app.screen.query_one(ImageView))  # not a grey smear
        engine.release()


def test_settings_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "explicit"))
    assert settings_path() == tmp_path / "explicit" / "settings.toml"
    monkeypatch.delenv("LORATUI_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert settings_path() == tmp_path / "xdg" / "loratui" / "settings.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert settings_path() == tmp_path / "home" / ".config" / "loratui" / "settings.toml"


def test_settings_round_trip_and_recent_order(tmp_path):
    settings = Settings(theme="light")
    for i in range(12):
        settings.add_recent(tmp_path / f"p{i}")
    settings.add_recent(tmp_path / "p5")  # reopening moves it to the top, once
    path = save_settings(settings)
    loaded = load_settings(path)
    assert loaded.theme == "light"
    assert loaded.recent[0] == str((tmp_path / "p5").resolve())
    assert len(loaded.recent) == 10 and len(set(loaded.recent)) == 10
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left nothing behind


def test_broken_settings_give_defaults_and_a_reason(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("theme = [unclosed", encoding="utf-8")
    loaded = load_settings(path)
    assert loaded.theme is None and loaded.recent == []
    assert loaded.problem and str(path) in loaded.problem


def test_bundled_themes_all_load():
    from loratui.tui.themes import bundled_theme_dir, discover_themes

    themes, problems = discover_themes([bundled_theme_dir()])
    assert problems == []
    assert {"dark", "light", "high-contrast"} <= set(themes)
    assert themes["light"].dark is False and themes["dark"].dark is True


def test_a_bad_theme_file_is_named(tmp_path):
    from loratui.tui.themes import discover_themes

    (tmp_path / "ugly.toml").write_text('primary = "#12345"\nbackground = "not a colour"\n', encoding="utf-8")
    (tmp_path / "typo.toml").write_text('primray = "#123456"\n', encoding="utf-8")
    themes, problems = discover_themes([tmp_path])
    assert themes == {}
    assert any("ugly.toml" in p for p in problems)
    assert any("typo.toml" in p and "primray" in p for p in problems)


@pytest.mark.parametrize("term", ["screen-256color", "dumb", ""])
async def test_the_start_screen_opens_whatever_the_terminal_type(term, monkeypatch):
    # tmux sets TERM=screen-256color, some SSH clients dumb or nothing; the app must start under each.
    monkeypatch.setenv("TERM", term)
    app = start_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)


def test_create_project_helper_is_idempotent(tmp_path):
    create_project(tmp_path / "x")
    create_project(tmp_path / "x")
    assert (tmp_path / "x" / CONFIG_NAME).is_file()
