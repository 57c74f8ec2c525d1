"""Every dashboard control, driven through the real app with the fake engine."""

from __future__ import annotations

import json
from pathlib import Path

from loratui.commands import Command
from loratui.tui.dashboard import DashboardScreen
from loratui.tui.help_screen import HelpScreen
from loratui.tui.modals import ChoiceModal, ErrorModal, LogScreen
from loratui.tui.widgets.checkpoint_list import CheckpointList
from loratui.tui.widgets.sample_gallery import SampleCard
from loratui.tui.widgets.stats_panel import StatsPanel
from loratui.tui.widgets.status_bar import StatusBar

from .conftest import settle, text_of, wait_until
from .fake_engine import FakeEngine, fake_loss


async def start_and_hold(pilot, engine: FakeEngine) -> DashboardScreen:
    screen = pilot.app.screen
    assert isinstance(screen, DashboardScreen)
    await pilot.press("t")
    await wait_until(pilot, lambda: engine.holding.is_set() and screen.state.step == engine.hold_at)
    await settle(pilot, screen)
    return screen


def badge(screen) -> str:
    return text_of(screen.query_one("#status-badge"))


def footer_actions(screen) -> set[str]:
    return {a.binding.action for a in screen.active_bindings.values() if a.enabled}


async def test_step_counter_progress_and_loss(make_app):
    engine = FakeEngine(40, hold_at=20)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start_and_hold(pilot, engine)
        stats = text_of(screen.query_one(StatsPanel))
        assert "20 / 40" in stats
        assert f"{fake_loss(20):.4f}" in stats
        assert "2.00 it/s" in stats  # 0.5 s per fake step
        assert "10s" in stats  # ETA: 20 steps left at 0.5 s
        assert screen.query_one("#progress").percentage == 0.5
        assert badge(screen).endswith("TRAINING")
        assert engine.calls[0]["resume"] is False
        engine.release()
        await wait_until(pilot, lambda: screen.state.phase == "finished")


async def test_a_new_project_shows_its_planned_steps_and_a_still_bar(make_app, project):
    app = make_app(FakeEngine(40, hold_at=20))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await settle(pilot, screen)
        assert "0 / 1000" in text_of(screen.query_one(StatsPanel))  # a new project's max_steps
        bar = screen.query_one("#progress")
        assert bar.total == 1000 and bar.percentage == 0


async def test_pause_and_resume_are_sent_and_shown(make_app):
    engine = FakeEngine(40, hold_at=10)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start_and_hold(pilot, engine)
        assert "pause" in footer_actions(screen) and "resume" not in footer_actions(screen)
        await pilot.press("p")
        await wait_until(pilot, lambda: screen.state.phase == "paused")
        assert engine.received == [Command.PAUSE]
        assert badge(screen).endswith("PAUSED")
        assert "resume" in footer_actions(screen) and "pause" not in footer_actions(screen)
        await pilot.press("p")
        await wait_until(pilot, lambda: screen.state.phase == "training")
        assert engine.received == [Command.PAUSE, Command.RESUME]
        assert badge(screen).endswith("TRAINING")
        engine.release()
        await wait_until(pilot, lambda: screen.state.phase == "finished")


async def test_sample_now_shows_the_new_sample(make_app):
    engine = FakeEngine(40, hold_at=12, prompts=("a photo of sks dog", "sks dog in snow"))
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start_and_hold(pilot, engine)
        assert not screen.query(SampleCard)
        await pilot.press("s")
        await wait_until(pilot, lambda: len(screen.state.samples) == 2)
        await settle(pilot, screen)
        assert engine.received == [Command.SAMPLE_NOW]
        cards = list(screen.query(SampleCard))
        assert [c.sample.prompt for c in cards] == ["a photo of sks dog", "sks dog in snow"]
        assert "step 12" in text_of(cards[0].query_one(".sample-card--meta"))
        engine.release()


async def test_checkpoint_now_appears_in_the_list(make_app):
    engine = FakeEngine(40, hold_at=15)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start_and_hold(pilot, engine)
        assert "No checkpoints yet" in text_of(screen.query_one(CheckpointList))
        await pilot.press("c")
        await wait_until(pilot, lambda: bool(screen.state.checkpoints))
        await settle(pilot, screen)
        assert engine.received == [Command.CHECKPOINT_NOW]
        listing = text_of(screen.query_one(CheckpointList))
        assert "step 15" in listing and "on request" in listing
        engine.release()


async def test_stop_asks_first_then_saves_and_explains_the_result(make_app, project):
    engine = FakeEngine(40, hold_at=8)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start_and_hold(pilot, engine)
        await pilot.press("x")
        assert isinstance(app.screen, ChoiceModal)
        await pilot.press("n")  # keep training
        assert app.screen is screen and engine.received == []
        await pilot.press("x")
        await pilot.press("y")
        await wait_until(pilot, lambda: screen.state.phase == "finished")
        await settle(pilot, screen)
        assert engine.received == [Command.STOP]
        assert [c.reason for c in screen.state.checkpoints] == ["stop"]
        finished = text_of(screen.query_one("#finished"))
        lora = project / "output" / "demo_lora.safetensors"
        assert "Stopped at step 8/40" in finished
        assert f'pipe.load_lora_weights("{lora}")' in finished
        assert badge(screen).endswith("FINISHED")


async def test_finished_run_says_where_the_lora_is_and_how_to_use_it(make_app, project):
    engine = FakeEngine(12)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await pilot.press("t")
        await wait_until(pilot, lambda: screen.state.phase == "finished")
        await settle(pilot, screen)
        finished = text_of(screen.query_one("#finished"))
        assert "Finished at step 12" in finished
        assert str(project / "output" / "demo_lora.safetensors") in finished
        assert "ComfyUI/models/loras" in finished and "models/Lora" in finished
        assert {"train", "edit"} <= footer_actions(screen)
        assert not {"pause", "sample", "stop"} & footer_actions(screen)
        await pilot.press("s")  # dimmed, but it still answers: here, why there is no picture
        assert "No sample" in screen.query_one("#status").text


async def test_failure_shows_a_modal_and_the_app_stays_usable(make_app, project):
    engine = FakeEngine(40, fail_at=6)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorModal))
        modal = app.screen
        assert "CUDA out of memory" in modal.message
        assert modal.log_path == str(project / "logs" / "train.log")
        await pilot.press("escape")
        assert app.screen is screen
        await wait_until(pilot, lambda: screen.state.phase == "failed")
        assert badge(screen).endswith("FAILED")
        assert len(screen.state.history) == 5
        await pilot.press("l")  # still responds
        assert isinstance(app.screen, LogScreen)


async def test_engine_crash_without_failed_event_still_reports(make_app):
    def broken_engine(project_dir, **kwargs):
        raise ImportError("No module named 'loratui.engine.runner'")

    app = make_app(broken_engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorModal))
        assert "ImportError" in app.screen.message


async def test_log_view_shows_the_log_file_and_run_events(make_app):
    engine = FakeEngine(10, hold_at=5)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await start_and_hold(pilot, engine)
        await pilot.press("l")
        log = app.screen
        assert isinstance(log, LogScreen)
        await pilot.pause(0.1)
        file_lines = "\n".join(s.text for s in log.query_one("#log-file").lines)
        event_lines = "\n".join(s.text for s in log.query_one("#log-events").lines)
        assert '"event": "step"' in file_lines  # the tail of logs/train.log
        assert "started at step 0/10" in event_lines
        await pilot.press("escape")
        engine.release()


async def test_help_lists_the_dashboard_keys(make_app):
    app = make_app(FakeEngine(5))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f1")
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        described = {row.description: row.keys for row in help_screen.rows}
        assert described["Sample"] == "s" and described["Stop"] == "x"
        assert described["Checkpoint"] == "c" and described["Log"] == "l"
        await pilot.press("question_mark")
        assert isinstance(app.screen, DashboardScreen)


async def test_quit_while_training_stops_properly(make_app):
    engine = FakeEngine(40, hold_at=7)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start_and_hold(pilot, engine)
        await pilot.press("q")
        assert isinstance(app.screen, ChoiceModal)
        await pilot.press("y")
        await wait_until(pilot, lambda: app._exit)
        assert engine.received == [Command.STOP]
        assert screen.state.finished is not None and screen.state.finished.stopped_early


async def test_quit_without_saving_aborts_quietly(make_app):
    engine = FakeEngine(40, hold_at=7)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start_and_hold(pilot, engine)
        await pilot.press("q")
        await pilot.press("a")
        await wait_until(pilot, lambda: app._exit)
        assert engine.received == [Command.ABORT]
        assert not any(isinstance(s, ErrorModal) for s in app.screen_stack)
        assert screen.state.finished is None


async def test_train_command_starts_at_once_with_its_options(project):
    from loratui.tui.app import LoratuiApp

    engine = FakeEngine(40)
    app = LoratuiApp(project, mode="open", engine=engine, warmup=None, autostart=True, max_steps=7,
                     overrides=["train.learning_rate=0.001"])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.state.phase == "finished")
        assert engine.calls == [{"project_dir": project.resolve(), "resume": False, "max_steps": 7,
                                 "overrides": ("train.learning_rate=0.001",)}]
        assert screen.state.step == 7


async def test_every_step_reaches_the_history_even_when_drawing_is_throttled(make_app):
    engine = FakeEngine(400)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await pilot.press("t")
        await wait_until(pilot, lambda: screen.state.phase == "finished")
        assert screen.state.history.steps == list(range(1, 401))
        assert screen.state.history.losses[99] == fake_loss(100)


def write_stopped_run(project: Path, *, last_step: int, checkpoint: int, total: int) -> None:
    """The files a run leaves when it is killed after ``last_step`` with a checkpoint at ``checkpoint``."""
    engine = FakeEngine(total)
    engine._root, engine._total = project, total
    (project / "logs").mkdir(exist_ok=True)
    with (project / "logs" / "metrics.jsonl").open("w") as f:
        for step in range(1, last_step + 1):
            row = {"event": "step", "step": step, "total_steps": total, "epoch": 1, "loss": fake_loss(step),
                   "lr": 1e-4, "step_time_s": 0.5, "data_time_s": 0.05, "compute_time_s": 0.4,
                   "optimizer_time_s": 0.05, "samples_per_s": 2.0, "ram_mb": 2048.0, "time": 1.0 + step}
            f.write(json.dumps(row) + "\n")
        f.write('{"event": "step", "step": 99')  # torn line from the kill
    (project / "checkpoints" / f"step-{checkpoint:06d}").mkdir(parents=True)


async def test_reopening_a_stopped_run_offers_resume_and_reloads_history(make_app, project):
    write_stopped_run(project, last_step=25, checkpoint=20, total=40)
    engine = FakeEngine(40, hold_at=30)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ChoiceModal))
        assert "stopped at step 25 of 40" in str(app.screen.body)
        dashboard = app.screen_stack[-2]
        assert dashboard.state.history.steps == list(range(1, 26))
        assert text_of(dashboard.query_one(StatsPanel)).count("25 / 40") == 1
        await pilot.press("r")
        await wait_until(pilot, lambda: engine.holding.is_set() and dashboard.state.step == 30)
        assert engine.calls[0]["resume"] is True
        # steps 21..25 were trained again: one value per step, the new ones
        assert dashboard.state.history.steps == list(range(1, 31))
        engine.release()


async def test_resume_offer_can_be_declined_and_start_over_chosen(make_app, project):
    write_stopped_run(project, last_step=25, checkpoint=20, total=40)
    engine = FakeEngine(40, hold_at=3)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ChoiceModal))
        await pilot.press("n")
        dashboard = app.screen
        assert isinstance(dashboard, DashboardScreen) and engine.calls == []
        assert "press t to resume" in dashboard.query_one(StatusBar).text
        await pilot.press("t")
        assert isinstance(app.screen, ChoiceModal)
        await pilot.press("o")  # start over
        await wait_until(pilot, lambda: engine.holding.is_set() and dashboard.state.step == 3)
        assert engine.calls[0]["resume"] is False
        assert dashboard.state.history.steps == [1, 2, 3]
        engine.release()


async def test_reopening_a_finished_project_shows_the_result_without_offering_resume(make_app, project):
    from loratui.commands import CommandChannel

    FakeEngine(12, sample_every=6)(project, emit=lambda event: None, commands=CommandChannel())
    app = make_app(FakeEngine(12))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)  # no resume question on top
        assert badge(screen).endswith("FINISHED")
        assert str(project / "output" / "demo_lora.safetensors") in text_of(screen.query_one("#finished"))
        assert screen.state.history.steps == list(range(1, 13))
        assert [c.sample.step for c in screen.query(SampleCard)] == [12]


async def test_brackets_step_through_earlier_samples(make_app):
    engine = FakeEngine(40, hold_at=15, sample_every=5)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start_and_hold(pilot, engine)
        pane = screen.query_one("#sample-pane")

        def shown() -> list[int]:
            return [card.sample.step for card in screen.query(SampleCard)]

        assert shown() == [15] and pane.border_title == "Samples · step 15 · [ older"
        # The gallery swaps its cards by removing and mounting widgets, which can take a few frames.
        await pilot.press("left_square_bracket")
        await wait_until(pilot, lambda: shown() == [10])
        assert "(2 of 3)" in pane.border_title
        await pilot.press("left_square_bracket", "left_square_bracket")  # stops at the oldest
        await wait_until(pilot, lambda: shown() == [5])
        await pilot.press("right_square_bracket", "right_square_bracket")
        await wait_until(pilot, lambda: shown() == [15])
        await pilot.press("f1")
        described = {row.description: row.keys for row in app.screen.rows}
        assert described["Older samples"] == "[" and described["Newer samples"] == "]"
        engine.release()
