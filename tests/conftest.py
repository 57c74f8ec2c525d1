"""Suite-wide settings: one torch thread per worker, offline hub, private cache and settings dirs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The flow-family checks shared by several test files assert in a helper module: rewrite it as pytest
# rewrites test modules, so a failing check shows its values.
pytest.register_assert_rewrite("tests.flow_family")

# Two xdist workers share two cores; more threads each would only make them fight.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")

# One cache per test run, shared by the xdist workers so each built-in model is built once per
# run (the build is atomic, so two workers racing to build it is safe).
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
_CACHE = Path(tempfile.gettempdir()) / f"loratui-test-cache-{_RUN_ID}"
os.environ["LORATUI_CACHE_DIR"] = str(_CACHE)
os.environ["LORATUI_CONFIG_DIR"] = str(_CACHE / "config")
os.environ["LORATUI_STATE_DIR"] = str(_CACHE / "state")  # the registry of runs

REPO = Path(__file__).resolve().parent.parent
SAMPLE_PROJECT = REPO / "sample_project"

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - the TUI tests run without torch too
    pass


@pytest.fixture
def sample_project(tmp_path: Path) -> Path:
    """A private copy of sample_project (images and config only), safe to train in."""
    dst = tmp_path / "sample_project"
    shutil.copytree(SAMPLE_PROJECT, dst, ignore=shutil.ignore_patterns(
        "output", "checkpoints", "samples", "logs", ".cache", ".loratui.lock", "*.py"))
    return dst


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, after all workers are done
        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Print what the robustness tests tried and how each case was handled, in words."""
    lines = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for key, value in getattr(report, "user_properties", []):
                if key == "summary":
                    mark = "ok  " if report.passed else "FAIL"
                    lines.append(f"{mark} {value}")
    if lines:
        terminalreporter.section("what was tried and how loratui handled it")
        for line in sorted(lines):
            terminalreporter.write_line(line)
