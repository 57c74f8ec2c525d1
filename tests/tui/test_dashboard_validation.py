"""The validation loss in the dashboard: beside the training loss on one step axis, the best checkpoint
marked, the advisor's notes in the events pane, and all of it again when the project is reopened."""

from __future__ import annotations

from rich.text import Text

from loratui.events import Advice
from loratui.tui.dashboard import DashboardScreen
from loratui.tui.widgets.checkpoint_list import BEST_MARK, CheckpointList
from loratui.tui.widgets.loss_plot import LossPlot
from loratui.tui.widgets.sample_gallery import SampleCard, SampleGallery

from .conftest import settle, text_of, wait_until
from .fake_engine import FakeEngine


def _validation_columns(plot: LossPlot) -> list[int]:
    """Columns of the rendered plot drawn in the validation style."""
    rendered = plot.render()
    assert isinstance(rendered, Text)
    style = plot.get_component_rich_style("loss-plot--validation")
    plain = rendered.plain
    columns = set()
    for span in rendered.spans:
        if span.style == style:
            line_start = plain.rfind("\n", 0, span.start) + 1
            columns.update(range(span.start - line_start, span.end - line_start))
    return sorted(columns)


async def test_both_curves_share_the_step_axis_and_the_best_checkpoint_is_marked(make_app, project):
    engine = FakeEngine(40, validate_every=5, checkpoint_every=10)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await pilot.press("t")
        await wait_until(pilot, lambda: screen.state.phase == "finished", timeout=30)
        await settle(pilot, screen)
        plot = screen.query_one("#plot", LossPlot)
        assert [v.step for v in plot.validations] == [5, 10, 15, 20, 25, 30, 35, 40]
        columns = _validation_columns(plot)
        assert columns, "no validation cells drawn"
        # The training curve spans steps 1..40 across the plot; validation starts at step 5 and ends at 40.
        plain = plot.render().plain.splitlines()
        curve_start = plain[0].index("┤") + 1
        width = len(plain[0]) - curve_start
        first = (columns[0] - curve_start) / width
        assert 0.05 < first < 0.2, first  # step 5 of 40
        assert columns[-1] >= curve_start + width - 2  # step 40: the right edge
        listing = text_of(screen.query_one(CheckpointList))
        best_row = next(line for line in listing.splitlines() if BEST_MARK in line)
        assert best_row.strip().startswith("step 20")
        assert listing.count(BEST_MARK) == 1
        assert "validation at step 20: 0.1500 (new best)" in "\n".join(screen.state.log)
        screen.post_message(DashboardScreen.EngineEvent(Advice(rule="overfitting", step=40,
                                                               text="overfitting since step 20: ...")))
        await wait_until(pilot, lambda: any(line.startswith("advisor: overfitting since step 20")
                                            for line in screen.state.log), timeout=30)


async def test_reopening_the_project_shows_the_validation_curve_and_best_checkpoint(make_app, project):
    engine = FakeEngine(40, validate_every=5, checkpoint_every=10)
    async with make_app(engine).run_test(size=(120, 40)) as pilot:
        screen = pilot.app.screen
        await pilot.press("t")
        await wait_until(pilot, lambda: screen.state.phase == "finished", timeout=30)
    async with make_app(FakeEngine()).run_test(size=(120, 40)) as pilot:
        screen = pilot.app.screen
        await settle(pilot, screen)
        assert len(screen.query_one("#plot", LossPlot).validations) == 8
        assert screen.state.best_step == 20
        best_row = next(line for line in text_of(screen.query_one(CheckpointList)).splitlines() if BEST_MARK in line)
        assert best_row.strip().startswith("step 20")


async def test_the_gallery_compares_one_prompt_across_steps(make_app, project):
    engine = FakeEngine(40, sample_every=5, prompts=("a red ball", "a blue cube"))
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await pilot.press("t")
        await wait_until(pilot, lambda: screen.state.phase == "finished", timeout=30)
        await settle(pilot, screen)
        gallery = screen.query_one(SampleGallery)
        # The gallery takes the newest samples on the dashboard's next repaint, not at the Finished event.
        await wait_until(pilot, lambda: {s.step for s in gallery.samples} == {40}, timeout=30)
        await pilot.press("v")
        await settle(pilot, screen)
        assert [(s.prompt, s.step) for s in gallery.samples] == [("a red ball", step) for step in (25, 30, 35, 40)]
        assert "across steps 25–40" in screen.query_one("#sample-pane").border_title
        await wait_until(pilot, lambda: len(screen.query(SampleCard)) == 4, timeout=30)
        await pilot.press("left_square_bracket")
        await settle(pilot, screen)
        assert [s.step for s in gallery.samples] == [20, 25, 30, 35]
        await pilot.press("v")
        await settle(pilot, screen)
        assert {s.prompt for s in gallery.samples} == {"a blue cube"}
        assert [s.step for s in gallery.samples] == [25, 30, 35, 40]
        await pilot.press("v")  # past the last prompt: back to one step's samples
        await settle(pilot, screen)
        assert gallery.comparing is None and {s.step for s in gallery.samples} == {40}
