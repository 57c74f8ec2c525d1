"""What a project folder says about its past runs: loss history, checkpoints,
samples, the LoRA, and whether an interrupted run can be resumed.

The dashboard reads this when a project is opened, so reopening one shows the
run as it was left, from the files alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from loratui.config import ConfigError, load_config
from loratui.events import CheckpointSaved, SampleReady, StepDone, ValidationDone
from loratui.project import ProjectPaths
from loratui.tui.widgets.loss_history import read_metrics, read_validations

_STEP_DIR = re.compile(r"^step-(\d+)$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class ProjectRuns:
    root: Path
    name: str
    rows: list[StepDone] = field(default_factory=list)
    checkpoints: list[CheckpointSaved] = field(default_factory=list)
    samples: list[SampleReady] = field(default_factory=list)
    validations: list[ValidationDone] = field(default_factory=list)
    best_step: int | None = None
    """The best checkpoint's step, as the newest checkpoint records it."""
    lora_file: Path | None = None
    config_problem: str | None = None
    planned_steps: int | None = None
    """What the config asks for, when it does not depend on the image count (epochs = 0)."""

    @property
    def last_step(self) -> int:
        return self.rows[-1].step if self.rows else 0

    @property
    def total_steps(self) -> int | None:
        return self.rows[-1].total_steps if self.rows else None

    @property
    def newest_checkpoint(self) -> CheckpointSaved | None:
        return max(self.checkpoints, key=lambda c: c.step, default=None)

    @property
    def lora_is_current(self) -> bool:
        """A LoRA exists and nothing was saved after it."""
        if self.lora_file is None:
            return False
        newest = self.newest_checkpoint
        return newest is None or self.lora_file.stat().st_mtime >= newest.time

    @property
    def ended_early(self) -> bool:
        total = self.total_steps
        return bool(self.rows) and total is not None and self.last_step < total

    @property
    def resumable(self) -> bool:
        """Stopped before its end (or before writing its LoRA) with a checkpoint to continue from.

        The engine may write the final checkpoint after the LoRA, so a LoRA older than a
        checkpoint only means "stopped" when that checkpoint is not the last step."""
        newest = self.newest_checkpoint
        if newest is None:
            return False
        if self.lora_file is None or self.ended_early:
            return True
        total = self.total_steps
        return not self.lora_is_current and (total is None or newest.step < total)

    @property
    def finished(self) -> bool:
        return self.lora_file is not None and not self.resumable

    def summary(self) -> str:
        """One sentence for the status line: what state the project is in and what to press."""
        if self.config_problem:
            return self.config_problem.splitlines()[0]
        newest = self.newest_checkpoint
        if self.resumable and newest is not None:
            return f"Stopped at step {self.last_step}; press t to resume from the checkpoint at step {newest.step}."
        if self.finished:
            return "The last run finished. Press t to train again, e to change the setup."
        return "Ready. Press t to train, e to change the setup."


def read_project_runs(root: Path) -> ProjectRuns:
    paths = ProjectPaths(root)
    runs = ProjectRuns(root=root, name=root.name)
    try:
        cfg = load_config(root)
        runs.name = cfg.name
        runs.planned_steps = cfg.train.max_steps if cfg.train.epochs == 0 else None
        lora = paths.lora_file(cfg)
        runs.lora_file = lora if lora.is_file() else None
    except ConfigError as exc:
        runs.config_problem = str(exc)
        found = sorted(paths.output.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        runs.lora_file = found[-1] if found else None
    runs.rows = read_metrics(paths.metrics)
    runs.checkpoints = _checkpoints(paths.checkpoints)
    runs.validations = read_validations(paths.metrics)
    runs.best_step = _best_step(paths.checkpoints, runs.checkpoints)
    runs.samples = _samples(paths.samples)
    return runs


def _step_dirs(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def _checkpoints(folder: Path) -> list[CheckpointSaved]:
    return [CheckpointSaved(step=step, path=str(path), reason="on disk", time=path.stat().st_mtime)
            for step, path in _step_dirs(folder)]


def _best_step(folder: Path, checkpoints: list[CheckpointSaved]) -> int | None:
    if not checkpoints:
        return None
    newest = max(checkpoints, key=lambda c: c.step)
    try:
        best = json.loads((Path(newest.path) / "state.json").read_text(encoding="utf-8")).get("best_step")
    except (OSError, ValueError, AttributeError):
        return None
    return best if isinstance(best, int) else None


def _samples(folder: Path) -> list[SampleReady]:
    """Every sample on disk, oldest step first (images are only read when shown)."""
    samples = []
    for step, path in _step_dirs(folder):
        for i, image in enumerate(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)):
            prompt, seed = _sample_meta(image)
            samples.append(SampleReady(step=step, path=str(image), prompt=prompt,
                                       seed=seed if seed is not None else i, time=image.stat().st_mtime))
    return samples


def _sample_meta(image: Path) -> tuple[str, int | None]:
    """The prompt (and seed, when recorded) written beside a sample image."""
    meta = image.with_suffix(".json")
    if meta.is_file():
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            seed = data.get("seed")
            return str(data.get("prompt", "")), seed if isinstance(seed, int) else None
        except (OSError, ValueError, AttributeError):
            pass
    text = image.with_suffix(".txt")
    if text.is_file():
        try:
            return _parse_sample_txt(text.read_text(encoding="utf-8"))
        except OSError:
            pass
    return "", None


def _parse_sample_txt(text: str) -> tuple[str, int | None]:
    """Either ``key: value`` lines (prompt, seed, …) as the engine writes them, or just the prompt."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("prompt", "negative", "seed", "steps", "guidance", "size", "lora scale"):
            fields[key.strip()] = value.strip()
    if "prompt" not in fields:
        return text.strip(), None
    seed = fields.get("seed", "")
    return fields["prompt"], int(seed) if seed.isdigit() else None
