"""The dashboard as a client of a run: detach leaves it training, attach picks it up with its history."""

from __future__ import annotations

from pathlib import Path

from loratui.commands import Command
from loratui.events import NotifyDone, NotifyPending
from loratui.tui.app import LoratuiApp
from loratui.tui.dashboard import DashboardScreen
from loratui.tui.modals import ChoiceModal

from .conftest import BACKEND, FIXED_NOW, settle, wait_until
from .fake_engine import FakeEngine
from .test_dashboard import start_and_hold


async def test_q_offers_detach_first_and_detaching_leaves_the_run_alone(make_app, capsys):
    engine = FakeEngine(40, hold_at=7)
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await start_and_hold(pilot, engine)
        await pilot.press("q")
        modal = app.screen
        assert isinstance(modal, ChoiceModal)
        assert modal.choices[0].value == "detach" and modal.choices[0].label == "Detach (keep training)"
        assert [c.value for c in modal.choices] == ["detach", "stop", "abort", "cancel"]
        await pilot.press("d")
        await wait_until(pilot, lambda: app._exit)
    assert engine.received == [Command.DETACH]  # not STOP, not ABORT: the run goes on
    assert "Come back with: loratui attach" in capsys.readouterr().err


async def test_d_detaches_directly(make_app):
    engine = FakeEngine(40, hold_at=7)
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await start_and_hold(pilot, engine)
        await pilot.press("d")
        await wait_until(pilot, lambda: app._exit)
    assert engine.received == [Command.DETACH]


async def test_opening_a_project_with_a_live_run_attaches_and_shows_the_history_so_far(project: Path):
    # A run that already did 12 steps (on disk) and goes on: the attacher replays and continues it.
    from loratui.commands import CommandChannel

    earlier = FakeEngine(12)

    earlier(project, emit=lambda e: None, commands=CommandChannel())  # leaves metrics.jsonl with 12 steps
    live = FakeEngine(30, hold_at=20)
    calls: list[Path] = []

    def attacher(project_dir: Path, *, emit, commands) -> None:
        calls.append(project_dir)
        live(project_dir, emit=emit, commands=commands, resume=True)

    app = LoratuiApp(project, mode="open", engine=FakeEngine(), warmup=lambda: BACKEND, clock=lambda: FIXED_NOW,
                     attacher=attacher, live_run=lambda p: True)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await wait_until(pilot, lambda: live.holding.is_set() and screen.state.step == 20)
        await settle(pilot, screen)
        assert calls == [project.resolve()]
        assert screen.state.history.steps == list(range(1, 21))  # from metrics.jsonl, then the live steps
        await pilot.press("p")
        await wait_until(pilot, lambda: screen.state.phase == "paused")
        await pilot.press("p")
        await wait_until(pilot, lambda: screen.state.phase == "training")
        await pilot.press("d")
        await wait_until(pilot, lambda: app._exit)
    assert live.received == [Command.PAUSE, Command.RESUME, Command.DETACH]


async def test_the_end_of_run_countdown_shows_and_n_cancels_it(make_app):
    engine = FakeEngine(5, hold_at=3)
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await start_and_hold(pilot, engine)
        screen.post_message(DashboardScreen.EngineEvent(NotifyPending(status="finished", seconds=30,
                                                                      what="run `shutdown -h now`")))
        await wait_until(pilot, lambda: screen._notify_deadline is not None)
        await pilot.pause(0.1)
        assert "shutdown -h now" in str(screen.query_one("#status").text)
        await pilot.press("n")
        await wait_until(pilot, lambda: Command.CANCEL_NOTIFY in engine.received)
        screen.post_message(DashboardScreen.EngineEvent(NotifyDone(status="finished", ok=True, detail="cancelled",
                                                                   cancelled=True)))
        await wait_until(pilot, lambda: screen._notify_deadline is None)
        engine.release()
