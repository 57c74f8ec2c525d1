"""``loratui bench``, and the wizard's Measure that runs it in a child process."""

from __future__ import annotations

from pathlib import Path

import pytest

from loratui.config import apply_override, load_config, save_config
from loratui.tui.wizard.services import estimate


def test_measured_estimate_runs_real_steps_in_a_child_process(sample_project: Path, record_property) -> None:
    cfg = load_config(sample_project)
    est = estimate(sample_project, cfg, 200, None, measure=True)

    assert est.measured and est.total_steps == 200
    assert est.seconds_per_step is not None and 0 < est.seconds_per_step < 60
    assert est.peak_memory_mb is not None and est.peak_memory_mb > 0
    assert "measured over 3 steps" in est.note
    record_property("summary", f"wizard Measure: `loratui bench --json` in a child process timed "
                               f"{est.seconds_per_step:.2f} s/step on the tiny model")


def test_a_measurement_that_fails_says_why(sample_project: Path) -> None:
    cfg = load_config(sample_project)
    apply_override(cfg, "model.base=/nowhere/model.safetensors")
    save_config(sample_project, cfg)

    with pytest.raises(RuntimeError, match="/nowhere/model.safetensors"):
        estimate(sample_project, cfg, 200, None, measure=True)
