"""One call that runs a project's training: what the TUI worker and headless both use."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

from loratui.commands import CommandChannel
from loratui.config import ConfigError, ProjectConfig, apply_override, load_config
from loratui.events import Event, EventFanout, EventSink, Failed, Status, StepDone
from loratui.project import ProjectPaths, RunLock

log = logging.getLogger("loratui")


class MetricsWriter:
    """``logs/metrics.jsonl``: one JSON object per optimizer step, flushed as written,
    so a crash loses at most the step in flight and a dashboard can tail the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepDone):
            self._file.write(event.to_json() + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop rows past a resumed checkpoint: those steps are about to be trained again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a half-written last line from a crash
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``…: two runs started in the same second must not collide."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def archive_previous_run(paths: ProjectPaths) -> str | None:
    """A fresh start keeps the last run's checkpoints and metrics under a dated name; nothing is deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = None
    if paths.checkpoints.is_dir() and any(p.name.startswith("step-") for p in paths.checkpoints.iterdir()):
        dest = _unused(paths.checkpoints / f"previous-{stamp}")
        dest.mkdir()
        for child in paths.checkpoints.iterdir():
            if child.name.startswith("step-"):
                shutil.move(str(child), dest / child.name)
        moved = str(dest)
    if paths.metrics.exists() and paths.metrics.stat().st_size:
        os.replace(paths.metrics, _unused(paths.logs / f"metrics-{stamp}.jsonl"))
    return moved


def check_writable(paths: ProjectPaths) -> None:
    for folder in (paths.output, paths.checkpoints, paths.logs, paths.cache):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write to {folder}: {exc.strerror}. Make the project folder writable "
                              "(or copy the project somewhere you can write) and run again.") from None


def prepare_config(project_dir: Path, overrides: Sequence[str] = ()) -> ProjectConfig:
    cfg = load_config(project_dir)
    for item in overrides:
        apply_override(cfg, item)
    paths = ProjectPaths(Path(project_dir))
    if cfg.data.concepts:
        from loratui.data.concepts import missing_folders, resolve_concepts

        problems = missing_folders(resolve_concepts(cfg, paths.root))
        if problems:
            raise ConfigError(". ".join(problems) + ".")
        return cfg
    images = paths.images(cfg)
    if not images.is_dir():
        raise ConfigError(f"data.images = {cfg.data.images!r}: the folder {images} does not exist. Put your "
                          f"images there or point data.images at the folder that holds them.")
    return cfg


def _file_logging(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("loratui")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def _log_event(event: Event) -> None:
    if isinstance(event, Status):
        return  # the trainer logs its own status lines
    if isinstance(event, StepDone):
        return  # metrics.jsonl has them
    log.info("%s", event.to_json())


def run_training(project_dir: Path, *, emit: EventSink, commands: CommandChannel, resume: bool = False,
                 overrides: Sequence[str] = (), max_steps: int | None = None) -> Path | None:
    """Train the project until done, stopped or failed; returns the LoRA path."""
    from loratui.engine.quiet import quiet_libraries
    from loratui.engine.trainer import Trainer

    quiet_libraries()
    project_dir = Path(project_dir)
    paths = ProjectPaths(project_dir)
    cfg = prepare_config(project_dir, overrides)
    check_writable(paths)
    handler = _file_logging(paths.log_file)
    metrics: MetricsWriter | None = None
    trainer: Trainer | None = None
    try:
        with RunLock(paths):
            if not resume:  # a resume truncates the metrics once its checkpoint step is known, below
                moved = archive_previous_run(paths)
                if moved:
                    emit(Status(text=f"previous run's checkpoints kept in {moved}"))
            fan = EventFanout(emit, _log_event)
            trainer = Trainer(project_dir, cfg, emit=fan, commands=commands, resume=resume, max_steps=max_steps)
            trainer.setup()
            if trainer.session is not None and trainer.session.accelerator.is_main_process:
                truncate_metrics(paths.metrics, trainer.step)
                metrics = MetricsWriter(paths.metrics)
                fan.add(metrics)
            return trainer.train()
    except Exception as exc:
        step = trainer.step if trainer is not None else None
        log.exception("training failed")
        emit(Failed(message=failure_message(exc), log_path=str(paths.log_file), step=step))
        raise
    finally:
        if trainer is not None:
            trainer.cleanup()
        if metrics is not None:
            metrics.close()
        logging.getLogger("loratui").removeHandler(handler)
        handler.close()


def failure_message(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    if "out of memory" in text.lower():
        return ("the GPU ran out of memory. Lower train.batch_size or data.resolution, turn on "
                "train.gradient_checkpointing, or use train.optimizer = \"adamw8bit\". " + text.splitlines()[0])
    return text
