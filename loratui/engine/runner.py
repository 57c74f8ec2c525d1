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
from loratui.engine import distributed
from loratui.events import Event, EventFanout, EventSink, Failed, Status, StepDone, ValidationDone
from loratui.project import ProjectPaths, RunLock

log = logging.getLogger("loratui")


class MetricsWriter:
    """``logs/metrics.jsonl``: one JSON object per optimizer step (and one per validation), flushed as
    written, so a crash loses at most the step in flight and a dashboard can tail the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def __call__(self, event: Event) -> None:
        if isinstance(event, (StepDone, ValidationDone)):
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
            # One name per process: two starters probing at once must not remove each other's file.
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink(missing_ok=True)
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


def file_logging(path: Path) -> logging.Handler | None:
    """Log to ``path``; None when a handler already does (a run service logs before and after training)."""
    logger = logging.getLogger("loratui")
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in logger.handlers):
        return None
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
    """Train the project until done, stopped or failed; returns the LoRA path.

    Under a launcher with several processes every one of them calls this; rank 0 is the run (lock, events,
    files) and the others only train their share, reporting nothing but failures.
    """
    from loratui.engine.quiet import quiet_libraries
    from loratui.engine.trainer import Trainer

    quiet_libraries()
    project_dir = Path(project_dir)
    paths = ProjectPaths(project_dir)
    cfg = prepare_config(project_dir, overrides)
    ranks = distributed.start()
    if ranks.is_main:
        check_writable(paths)
    else:
        emit = _failures_only(emit)
    handler = file_logging(paths.log_file if ranks.is_main else paths.logs / f"train-rank{ranks.rank}.log")
    metrics: MetricsWriter | None = None
    board = None
    trainer: Trainer | None = None
    lock = RunLock(paths) if ranks.is_main else None
    finished = False
    try:
        if lock is not None:
            lock.acquire()
            if not resume:  # a resume truncates the metrics once its checkpoint step is known, below
                moved = archive_previous_run(paths)
                if moved:
                    emit(Status(text=f"previous run's checkpoints kept in {moved}"))
        # The other ranks start loading only once rank 0 holds the project (or has said why not).
        ranks.barrier("taking the project lock", timeout_s=600)
        ranks.on_lost = lambda message: _report_lost(message, emit, paths, lock, trainer)
        fan = EventFanout(emit, _log_event)
        trainer = Trainer(project_dir, cfg, emit=fan, commands=distributed.command_channel(commands, ranks),
                          resume=resume, max_steps=max_steps, ranks=ranks)
        trainer.setup()
        _check_same_start(ranks, trainer.step)
        if ranks.is_main:
            truncate_metrics(paths.metrics, trainer.step)
            metrics = MetricsWriter(paths.metrics)
            fan.add(metrics)
            board = _add_observers(fan, cfg, paths, trainer, resume)
        if ranks.distributed:
            t = cfg.train
            emit(Status(text=f"{ranks.world_size} processes: each optimizer step takes batch {t.batch_size} × "
                             f"accumulation {t.grad_accum} × {ranks.world_size} processes = "
                             f"{t.batch_size * t.grad_accum * ranks.world_size} images"))
        path = trainer.train()
        finished = True
        return path
    except Exception as exc:
        step = trainer.step if trainer is not None else None
        reported = ranks.explain(exc)
        if isinstance(reported, distributed.PeerLost) and ranks.is_main:
            reported = distributed.PeerLost(f"{reported}{_resume_hint(paths)}")
        if reported is exc:
            log.exception("training failed")
        else:
            log.error("%s", reported)
        ranks.record_failure(failure_message(reported))
        emit(Failed(message=failure_message(reported), log_path=str(paths.log_file), step=step))
        if reported is not exc:
            raise reported from None
        raise
    finally:
        ranks.close(finished=finished)
        if trainer is not None:
            trainer.cleanup()
        if metrics is not None:
            metrics.close()
        if board is not None:
            board.close()
        if lock is not None:
            lock.release()
        if handler is not None:
            logging.getLogger("loratui").removeHandler(handler)
            handler.close()


def _add_observers(fan: EventFanout, cfg: ProjectConfig, paths: ProjectPaths, trainer, resume: bool):
    """Rank 0's readers of the event stream besides the metrics: contact sheets, TensorBoard, the advisor.
    Returns the TensorBoard writer to close, if one was opened."""
    from loratui.engine.contact_sheet import ContactSheets

    fan.add(ContactSheets())
    board = None
    if cfg.logging.tensorboard:
        from loratui.engine.tensorboard_log import MISSING, open_tensorboard

        board = open_tensorboard(paths.logs / "tensorboard")
        if board is None:
            fan(Status(text=MISSING, level="warning"))
        else:
            fan.add(board)
    if cfg.advisor.enabled:
        from loratui.advisor import Advisor, facts_from_config, read_history

        history = read_history(paths.metrics) if resume else []
        fan.add(Advisor(facts_from_config(cfg, trainer.total_steps), fan, history))
    return board


def _check_same_start(ranks: distributed.Ranks, step: int) -> None:
    """Every rank must continue from the checkpoint rank 0 resumed from (a project folder that is not
    shared between machines gives the others none, or an older one)."""
    first = ranks.broadcast(step)
    if step != first:
        raise distributed.RanksDisagree(
            f"rank {ranks.rank} would start at step {step} but rank 0 at step {first}: they do not see the same "
            "checkpoints. On several machines the project folder must be on storage they all share.")


def _failures_only(emit: EventSink) -> EventSink:
    """The sink of a rank other than 0: rank 0 speaks for the run; the others only say why they fail."""
    def sink(event: Event) -> None:
        if isinstance(event, Failed) or (isinstance(event, Status) and event.level == "error"):
            emit(event)
    return sink


def _report_lost(message: str, emit: EventSink, paths: ProjectPaths, lock: RunLock | None, trainer) -> str:
    """A peer rank is gone and this process leaves at once: say so, and where the run can go on from."""
    if lock is not None:
        message += _resume_hint(paths)
        emit(Failed(message=message, log_path=str(paths.log_file),
                    step=trainer.step if trainer is not None else None))
        lock.release()
    return message


def _resume_hint(paths: ProjectPaths) -> str:
    from loratui.engine.checkpoint import latest_checkpoint

    latest = latest_checkpoint(paths.checkpoints)
    if latest is None:
        return " No checkpoint was written yet; start again."
    return (f" The newest complete checkpoint is {latest}; continue with `loratui train {paths.root} --headless "
            "--resume` (with any number of processes).")


def failure_message(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    if "out of memory" in text.lower():
        return ("the GPU ran out of memory. Lower train.batch_size or data.resolution, turn on "
                "train.gradient_checkpointing, or use train.optimizer = \"adamw8bit\"; for a transformer, store "
                "the base smaller (model.base_precision = \"int8\") or swap blocks (train.blocks_to_swap). "
                + text.splitlines()[0])
    return text
