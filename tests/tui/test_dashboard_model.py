"""The dashboard's data and drawing pieces on their own: loss history, plot, half-block image, project files."""

from __future__ import annotations

import json
import math
import os
import time

from PIL import Image
from rich.console import Console

from loratui.events import CheckpointSaved, Finished, Paused, Started, StepDone, event_from_dict
from loratui.project import create_project
from loratui.tui.widgets.image_view import HalfBlockImage, _pixel_rows
from loratui.loss_smoothing import EMA_BETA
from loratui.tui.widgets.loss_history import LossHistory, read_metrics
from loratui.tui.widgets.loss_plot import plot_text
from loratui.tui.widgets.project_runs import read_project_runs
from loratui.tui.widgets.run_state import RunState, format_duration

from .conftest import text_of


def step(n: int, loss: float = 0.2, total: int = 100) -> StepDone:
    return StepDone(step=n, total_steps=total, epoch=1, loss=loss, lr=1e-4, step_time_s=0.25, data_time_s=0.05,
                    compute_time_s=0.15, optimizer_time_s=0.05, samples_per_s=4.0, ram_mb=1000.0, time=float(n))


def test_ema_is_bias_corrected_and_skips_non_finite_losses():
    history = LossHistory()
    history.add(1, 0.5)
    assert history.smoothed == 0.5  # no pull towards zero at the start
    history.add(2, math.nan)
    assert history.smoothed == 0.5 and len(history) == 2
    history.add(3, 0.3)
    raw = EMA_BETA * (1 - EMA_BETA) * 0.5 + (1 - EMA_BETA) * 0.3
    assert math.isclose(history.smoothed, raw / (1 - EMA_BETA ** 2))


def test_repeated_steps_replace_the_old_values():
    history = LossHistory()
    for n in range(1, 11):
        history.add(n, 1.0)
    history.add(6, 0.1)  # a resumed run trains step 6 again
    assert history.steps == [1, 2, 3, 4, 5, 6]
    assert history.losses[-1] == 0.1
    fresh = LossHistory()
    for n, v in zip(history.steps, history.losses):
        fresh.add(n, v)
    assert history.ema == fresh.ema


def test_read_metrics_skips_torn_and_foreign_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [step(1).to_dict(), {"event": "checkpoint", "step": 1, "path": "x"}, step(2).to_dict()]
    rows[2]["future_field"] = 1  # written by a newer loratui
    path.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"event": "step", "st', encoding="utf-8")
    assert [r.step for r in read_metrics(path)] == [1, 2]
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_run_state_speed_eta_and_phases():
    state = RunState()
    state.apply(Started(total_steps=100, start_step=0, steps_per_epoch=10, num_images=10, device="cuda",
                        family="sd1", precision="bf16", trainable_params=1, time=0.0))
    for n in range(1, 41):
        state.apply(step(n))
    assert state.iterations_per_s() == 4.0 and state.samples_per_s() == 4.0
    assert state.eta_s() == 60 * 0.25
    state.apply(Paused(step=40))
    assert state.phase == "paused" and state.running
    state.apply(Finished(step=40, lora_path="/x.safetensors", outcome="stopped"))
    assert not state.running and state.finished.stopped_early
    assert format_duration(3725) == "1h 02m" and format_duration(65) == "1m 05s" and format_duration(None) == "–"


def test_progress_ticks_stay_out_of_the_log():
    from loratui.events import Status

    state = RunState()
    for i in range(16):
        state.apply(Status(text=f"encoding images {i}/16", progress=i / 16))
    state.apply(Status(text="latents: 16 encoded", progress=1.0))
    assert list(state.log) == ["latents: 16 encoded"]
    assert state.status.text == "latents: 16 encoded"


def test_pruned_checkpoints_leave_the_list():
    state = RunState()
    for n in (10, 20):
        state.apply(CheckpointSaved(step=n, path=f"/p/checkpoints/step-{n:06d}"))
    state.apply(CheckpointSaved(step=30, path="/p/checkpoints/step-000030", removed=("/p/checkpoints/step-000010",)))
    assert [c.step for c in state.checkpoints] == [20, 30]
    event = CheckpointSaved(step=40, path="/p/checkpoints/step-000040", removed=("/p/checkpoints/step-000020",))
    state.apply(event_from_dict(json.loads(event.to_json())))  # as it arrives from the training process
    assert [c.step for c in state.checkpoints] == [30, 40]


def test_started_from_a_checkpoint_drops_the_steps_after_it():
    state = RunState()
    for n in range(1, 31):
        state.apply(step(n))
    state.apply(Started(total_steps=100, start_step=20, steps_per_epoch=10, num_images=10, device="cpu",
                        family="sd1", precision="no", trainable_params=1, resumed_from="ckpt"))
    assert state.history.steps[-1] == 20


def test_loss_plot_draws_a_falling_curve_with_labels():
    history = LossHistory()
    for n in range(1, 201):
        history.add(n, 1.0 / n)
    rows = plot_text(history, 400, 60, 10).plain.splitlines()
    assert len(rows) == 10
    assert rows[-1].strip().startswith("└1") and rows[-1].endswith("step 400")
    assert "┤" in rows[0] and "┤" in rows[-2]
    braille = [r.split("┤")[-1].split("│")[-1] for r in rows[:-1]]
    # The curve starts high on the left and ends low, about half way across (200 of 400 steps).
    first_col = [i for i, r in enumerate(braille) if r[0] != "\u2800"]
    assert first_col and first_col[0] == 0
    last_cells = [max((j for j, ch in enumerate(r) if ch != "\u2800"), default=-1) for r in braille]
    assert 0.4 < max(last_cells) / len(braille[0]) < 0.6


def test_half_block_image_keeps_pixels_and_aspect(tmp_path):
    path = tmp_path / "img.png"
    img = Image.new("RGB", (2, 2))
    img.putdata([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)])
    img.save(path)
    rows = _pixel_rows(str(path), path.stat().st_mtime_ns, 2, 2)
    assert rows == (((255, 0, 0), (0, 255, 0)), ((0, 0, 255), (255, 255, 255)))
    segments = list(HalfBlockImage(rows, 2).__rich_console__(Console(), Console().options))
    top_left = segments[0]
    assert top_left.text == "▀"
    assert top_left.style.color.triplet == (255, 0, 0) and top_left.style.bgcolor.triplet == (0, 0, 255)
    wide = tmp_path / "wide.png"
    Image.new("RGBA", (64, 16), (0, 0, 0, 0)).save(wide)  # transparent: drawn on white
    fitted = _pixel_rows(str(wide), wide.stat().st_mtime_ns, 32, 32)
    assert (len(fitted[0]), len(fitted)) == (32, 8) and fitted[0][0] == (255, 255, 255)


def test_project_runs_tell_finished_from_stopped(tmp_path):
    root = tmp_path / "p"
    create_project(root)
    runs = read_project_runs(root)
    assert not runs.resumable and not runs.finished and runs.rows == []
    (root / "logs").mkdir()
    (root / "logs" / "metrics.jsonl").write_text(
        "\n".join(json.dumps(step(n, total=40).to_dict()) for n in range(1, 41)) + "\n", encoding="utf-8")
    ckpt = root / "checkpoints" / "step-000040"
    ckpt.mkdir(parents=True)
    os.utime(ckpt, (time.time() - 60, time.time() - 60))
    (root / "output").mkdir()
    lora = root / "output" / f"{runs.name}.safetensors"
    lora.write_bytes(b"x")
    runs = read_project_runs(root)
    assert runs.finished and not runs.resumable
    # The engine may save the final checkpoint just after the LoRA: still finished.
    os.utime(lora, (time.time() - 120, time.time() - 120))
    assert read_project_runs(root).finished and not read_project_runs(root).resumable
    # A later checkpoint before the last step (a second run stopped part way): resumable.
    (root / "checkpoints" / "step-000040").rename(root / "checkpoints" / "step-000030")
    with (root / "logs" / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(step(1, total=60).to_dict()) + "\n")
    assert read_project_runs(root).resumable
    lora.unlink()  # killed before the LoRA was written
    (root / "logs" / "metrics.jsonl").unlink()
    assert read_project_runs(root).resumable


def test_checkpoints_and_samples_are_found_on_disk(tmp_path):
    root = tmp_path / "p"
    create_project(root)
    for n in (100, 200):
        (root / "checkpoints" / f"step-{n:06d}").mkdir(parents=True)
    (root / "checkpoints" / "step-000300.tmp").mkdir()  # an interrupted save is not a checkpoint
    folder = root / "samples" / "step-000200"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "00.png")
    (folder / "00.json").write_text(json.dumps({"prompt": "sks dog", "seed": 7}), encoding="utf-8")
    Image.new("RGB", (8, 8)).save(folder / "01.png")
    (folder / "01.txt").write_text("sks cat\n", encoding="utf-8")
    Image.new("RGB", (8, 8)).save(folder / "02-seed9.png")  # the engine's own layout
    (folder / "02-seed9.txt").write_text("prompt: sks bird, blue\nnegative: \nseed: 9\nsteps: 8\n", encoding="utf-8")
    runs = read_project_runs(root)
    assert [c.step for c in runs.checkpoints] == [100, 200]
    assert [(s.step, s.prompt, s.seed) for s in runs.samples] == [
        (200, "sks dog", 7), (200, "sks cat", 1), (200, "sks bird, blue", 9)]


def test_checkpoint_list_shows_newest_first(tmp_path):
    from loratui.tui.widgets.checkpoint_list import CheckpointList

    widget = CheckpointList()
    widget.get_component_rich_style = lambda *a, **k: ""  # type: ignore[method-assign]
    widget.checkpoints = [CheckpointSaved(step=s, path=f"c{s}", reason="request", time=0.0) for s in (10, 30, 20)]
    lines = [line.strip() for line in text_of(widget).splitlines() if line.strip()]
    assert [line.split()[1] for line in lines] == ["30", "20", "10"]
    assert "on request" in lines[0]
