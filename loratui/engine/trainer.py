"""The training loop. It knows nothing of any screen: events out, commands in.

Read top to bottom: ``setup`` loads the model, injects LoRA, prepares the
cached dataset and the optimizer (and restores a checkpoint when resuming);
``train`` runs optimizer steps, reading commands between them; checkpoints,
samples and the final file are written through ``save_checkpoint`` and
``export``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import loratui
from loratui.commands import Command, CommandChannel
from loratui.config import ProjectConfig
from loratui.data.concepts import concept_summary
from loratui.engine import checkpoint as ckpt
from loratui.engine.batches import total_optimizer_steps
from loratui.engine.compat import config_digest, describe_differences
from loratui.engine.distributed import Ranks
from loratui.engine.dataset import loss_weights_on
from loratui.engine.memory import memory_snapshot
from loratui.engine.build import build_session
from loratui.engine.session import TrainingSession
from loratui.engine.step import step_generator, to_device
from loratui.engine.validation import Validation
from loratui.errors import UserError
from loratui.events import CheckpointSaved, EventSink, Finished, Paused, Resumed, SampleReady, Started, \
    Status, StepDone
from loratui.project import ProjectPaths
from loratui.tomlfile import render_config_toml

log = logging.getLogger("loratui")


@dataclass
class _StepRecord:
    """A finished step's numbers, some still on the device until _finish_step reads them."""

    step: int
    epoch: int
    loss_sum: torch.Tensor
    found_inf: torch.Tensor
    lr: float
    step_time: float
    data_time: float
    compute_time: float
    optimizer_time: float
    images: int


class NonFiniteLoss(UserError, RuntimeError):
    pass


MAX_BAD_STEPS = 10  # consecutive non-finite steps before the run is stopped


class Trainer:
    def __init__(self, project_dir: Path, cfg: ProjectConfig, *, emit: EventSink, commands: CommandChannel,
                 resume: bool = False, max_steps: int | None = None, ranks: Ranks | None = None) -> None:
        self.paths = ProjectPaths(Path(project_dir))
        self.ranks = ranks or Ranks()
        self.cfg = cfg
        self.emit = emit
        self.commands = commands
        self.resume = resume
        self.max_steps_override = max_steps
        self.session: TrainingSession | None = None
        self.step = 0
        self.micro_batch = 0
        self.skipped_steps = 0
        self.bad_in_a_row = 0
        self.total_steps = 0
        self.resumed_from: Path | None = None
        self._last_checkpoint_step = -1
        self._pending: _StepRecord | None = None
        self.paused = False
        self.validation: Validation | None = None
        self._recent_step_s: deque[float] = deque(maxlen=20)
        self._loop_started = time.perf_counter()
        self.started_at = time.time()  # the files' ss_training_started_at; set again when the loop starts
        self.defer_reports = False  # set in setup: on CUDA a step's numbers are read one step later

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        self.session = s = build_session(self.paths, self.cfg, status=self._status, ranks=self.ranks)
        plan = s.dataset.plan
        self.total_steps = total_optimizer_steps(
            plan, epochs=self.cfg.train.epochs, max_steps=self.cfg.train.max_steps,
            grad_accum=self.cfg.train.grad_accum, num_processes=s.accelerator.num_processes)
        if self.max_steps_override is not None:
            self.total_steps = self.max_steps_override
        s.make_lr_scheduler(self.total_steps)
        self.validation = Validation.create(s, self.total_steps)
        self.defer_reports = s.accelerator.device.type == "cuda"
        if self.resume:
            latest = ckpt.latest_checkpoint(self.paths.checkpoints)
            if latest is None:
                self._status("no checkpoint to resume from; starting at step 0", "warning")
            else:
                self.load_checkpoint(latest)

    # ---------------------------------------------------------------- loop
    def train(self) -> Path | None:
        s = self._session()
        s.unet.train()
        for te in s.trained_text_encoders:
            te.train()
        self.emit(Started(
            total_steps=self.total_steps, start_step=self.step, steps_per_epoch=self.steps_per_epoch,
            num_images=len(s.dataset.items), device=str(s.accelerator.device), family=s.model.family,
            # "no" mixed precision means the UNet trains in fp32; say so where people read it.
            precision="fp32" if self.cfg.train.precision == "no" else self.cfg.train.precision,
            trainable_params=s.trainable_params,
            resumed_from=str(self.resumed_from) if self.resumed_from else None,
            concepts=concept_summary(s.scan)))
        if self.validation is not None:
            self._status(self.validation.describe())
        self._loop_started, self.started_at = time.perf_counter(), time.time()
        outcome = self._serve_commands(self._read_commands())  # a pause or stop sent while loading
        while outcome is None and self.step < self.total_steps:
            outcome = self.train_one_step()
        if outcome == "aborted":
            self._status(f"aborted at step {self.step}: nothing saved after the last checkpoint", "warning")
            self.emit(Finished(step=self.step, lora_path=None, outcome="aborted"))
            return None
        self._guarded(self._flush)
        if self.validation is not None and self.step > 0 and self.validation.last_step != self.step:
            self.validate()
        lora_path = self.export()
        if self._last_checkpoint_step != self.step:
            self.save_checkpoint("stop" if outcome == "stopped" else "final")
        self.emit(Finished(step=self.step, lora_path=str(lora_path), outcome=outcome or "finished"))
        return lora_path

    def run_steps(self, count: int) -> None:
        """``count`` optimizer steps outside :meth:`train`, for measurements and tests: no commands,
        checkpoints or samples, and every step reported before it returns."""
        for _ in range(count):
            self._optimizer_step()
        self._flush()

    def train_one_step(self) -> str | None:
        """One optimizer step and what follows it at the step boundary; "stopped"/"aborted" ends the run."""
        self._guarded(self._optimizer_step)
        commands = self._read_commands()
        validate_due = self.validation is not None and self.validation.due(self.step)
        save_due = (self._due(self.cfg.save.every_n_steps) and self.step < self.total_steps
                    and self._last_checkpoint_step != self.step)
        sample_due = self._due(self.cfg.sample.every_n_steps)
        if commands or validate_due or save_due or sample_due or self.step >= self.total_steps:
            # The one place a deferred (CUDA) step's numbers are read: before anything shows or saves state.
            self._guarded(self._flush)
        if validate_due:
            self.validate()
        if save_due:
            self.save_checkpoint("interval")
        if sample_due:
            self.sample()
        return self._serve_commands(commands)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run a step (or report a deferred one); on a fault the last good state is saved first."""
        s = self._session()
        try:
            step()
        except NonFiniteLoss:
            # Skipped updates left the weights as they were before the first bad step.
            self._save_after_fault()
            raise
        except torch.OutOfMemoryError as exc:
            s.optimizer.zero_grad(set_to_none=True)
            mem = memory_snapshot(s.accelerator.device)
            figures = (f"{mem.gpu_alloc_mb:,.0f} MiB allocated, peak {mem.gpu_peak_mb:,.0f} MiB"
                       if mem.gpu_alloc_mb is not None else f"process RAM {mem.ram_mb:,.0f} MiB")
            if s.accelerator.device.type == "cuda":
                torch.cuda.empty_cache()
            saved = self._save_after_fault()
            where = f" The last good step ({self.step}) is saved in {saved}." if saved else ""
            raise OutOfMemory(
                f"out of memory at step {self.step + 1} ({figures}). To fit: lower train.batch_size "
                f"(now {self.cfg.train.batch_size}) or data.resolution (now {self.cfg.data.resolution}), turn on "
                "train.gradient_checkpointing, use train.optimizer = \"adamw8bit\", keep data.cache_latents on, "
                f"or train.precision = \"bf16\".{where} Resume with --resume after changing harmless settings. "
                f"({str(exc).splitlines()[0] if str(exc) else 'OutOfMemoryError'})") from None

    def _save_after_fault(self) -> Path | None:
        if self._last_checkpoint_step == self.step:
            return ckpt.latest_checkpoint(self.paths.checkpoints)
        try:
            return self.save_checkpoint("fault")
        except Exception:  # noqa: BLE001 - the original fault is what the user must see
            log.exception("could not save a checkpoint after the fault")
            return None

    @property
    def epoch(self) -> int:
        """Passes over the data so far, from the data position (right across resumes and GPUs)."""
        return self.micro_batch // max(1, self._session().dataset.plan.batches_per_epoch)

    @property
    def steps_per_epoch(self) -> int:
        s = self._session()
        per_step = self.cfg.train.grad_accum * s.accelerator.num_processes
        return max(1, math.ceil(s.dataset.plan.batches_per_epoch / per_step))

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _read_commands(self, *, wait: bool = False) -> list[Command]:
        """The one place commands enter the loop (several processes agree on them here).

        ``wait`` blocks for the next one, costing no CPU: how a paused run waits."""
        if wait:
            command = self.commands.wait()
            return [command] if command is not None else []
        return self.commands.drain()

    def _serve_commands(self, commands: list[Command]) -> str | None:
        """Act on commands; while paused keep serving them. Returns "stopped" or "aborted" to end the run."""
        while True:
            for command in commands:
                outcome = self._dispatch(command)
                if outcome is not None:
                    return outcome
            if not self.paused:
                return None
            commands = self._read_commands(wait=True)

    def _dispatch(self, command: Command) -> str | None:
        if command is Command.STOP:
            return "stopped"
        if command is Command.ABORT:
            return "aborted"
        if command is Command.PAUSE and not self.paused:
            self.paused = True
            self.emit(Paused(step=self.step))  # the model stays where it is
        elif command is Command.RESUME and self.paused:
            self.paused = False
            self.emit(Resumed(step=self.step))
        elif command is Command.SAMPLE_NOW:
            self.sample()
        elif command is Command.CHECKPOINT_NOW:
            self.save_checkpoint("request")
        return None

    def _optimizer_step(self) -> None:
        s = self._session()
        cfg = self.cfg.train
        acc = s.accelerator
        t_start = time.perf_counter()
        data_time = compute_time = 0.0
        loss_sum = torch.zeros((), device=acc.device)
        for k in range(cfg.grad_accum):
            t0 = time.perf_counter()
            index = self.micro_batch + k * acc.num_processes + acc.process_index
            epoch, entries = s.dataset.plan.micro_batch(index)
            gen = step_generator(cfg.seed, index)
            batch = s.dataset.batch(entries, micro_batch=index, seed=cfg.seed, generator=gen)
            latents = to_device(batch.latents, acc.device)
            weights = loss_weights_on(batch, acc.device)
            t1 = time.perf_counter()
            with acc.autocast():
                cond = s.conditioning(batch)
                loss = s.loss(latents, cond, gen, **weights)
            # Only the last micro-batch synchronises gradients across GPUs.
            if k < cfg.grad_accum - 1 and acc.num_processes > 1:
                with acc.no_sync(s.unet):
                    acc.backward(loss / cfg.grad_accum)
            else:
                acc.backward(loss / cfg.grad_accum)
            loss_sum += loss.detach()
            t2 = time.perf_counter()
            data_time += t1 - t0
            compute_time += t2 - t1
        self.micro_batch += cfg.grad_accum * acc.num_processes
        if acc.num_processes > 1:
            # The step's loss over every rank's micro-batches, as one process with their sum would report.
            loss_sum = acc.reduce(loss_sum, reduction="mean")
        t_opt = time.perf_counter()
        found_inf = s.optimizer_step(cfg.max_grad_norm)
        t_end = time.perf_counter()
        self.step += 1
        record = _StepRecord(
            step=self.step, epoch=self.epoch, loss_sum=loss_sum,
            found_inf=found_inf, lr=s.current_lr(), step_time=t_end - t_start, data_time=data_time,
            compute_time=compute_time, optimizer_time=t_end - t_opt,
            images=cfg.batch_size * cfg.grad_accum * acc.num_processes)
        if self.defer_reports:
            # Reading the loss waits for the GPU; do it for the previous step, whose work is long done,
            # while this step's kernels are already queued.
            record, self._pending = self._pending, record
        if record is not None:
            self._finish_step(record)

    def _flush(self) -> None:
        """Report a step whose numbers were deferred (CUDA); only ``train_one_step`` calls it."""
        if self._pending is not None:
            record, self._pending = self._pending, None
            self._finish_step(record)

    def _finish_step(self, r: _StepRecord) -> None:
        s = self._session()
        cfg = self.cfg.train
        loss_value = r.loss_sum.item() / cfg.grad_accum
        if r.found_inf.item() == 0:
            self.bad_in_a_row = 0
        else:
            self.skipped_steps += 1
            self.bad_in_a_row += 1
            self._status(f"step {r.step}: loss or gradient was not finite; the update was skipped", "warning")
            if self.bad_in_a_row >= MAX_BAD_STEPS:
                raise NonFiniteLoss(
                    f"{MAX_BAD_STEPS} steps in a row had a NaN/inf loss or gradient (from step "
                    f"{r.step - MAX_BAD_STEPS + 1}). Likely causes: a learning rate too high "
                    f"({cfg.learning_rate:g}), fp16 with the SDXL VAE or an fp16-unsafe model (try "
                    "precision = \"bf16\"), or a corrupt base model. The weights were not changed by those steps.")
        self._recent_step_s.append(r.step_time)
        mem = memory_snapshot(s.accelerator.device)
        self.emit(StepDone(
            step=r.step, total_steps=self.total_steps, epoch=r.epoch, loss=loss_value, lr=r.lr,
            step_time_s=r.step_time, data_time_s=r.data_time, compute_time_s=r.compute_time,
            optimizer_time_s=r.optimizer_time, samples_per_s=r.images / r.step_time if r.step_time > 0 else 0.0,
            ram_mb=mem.ram_mb, gpu_alloc_mb=mem.gpu_alloc_mb, gpu_peak_mb=mem.gpu_peak_mb,
            skipped_steps=self.skipped_steps))

    # ---------------------------------------------------------------- outputs
    def save_checkpoint(self, reason: str) -> Path | None:
        s = self._session()
        if not s.accelerator.is_main_process:
            return None
        digest = config_digest(self.cfg, s.dataset.fingerprint(), processes=s.accelerator.num_processes)
        state = ckpt.TrainState(
            step=self.step, micro_batch=self.micro_batch,
            epoch=self.epoch, skipped_steps=self.skipped_steps,
            loratui_version=loratui.__version__, config_digest=digest, saved_at=time.time(),
            best_step=self._best_step(), best_val_loss=self.validation.best_loss if self.validation else None)
        try:
            path = ckpt.write_checkpoint(
                self.paths.checkpoints, state, lora=s.files_state(), optimizer=s.optimizer.state_dict(),
                scheduler=s.lr_scheduler.state_dict(), config_text=render_config_toml(self.cfg),
                extra=s.resume_extra())
        except OSError as exc:
            # write_checkpoint removed its temporary folder; the previous checkpoints are untouched.
            previous = ckpt.latest_checkpoint(self.paths.checkpoints)
            keep = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            message = (f"could not write the step {self.step} checkpoint in {self.paths.checkpoints}: "
                       f"{exc.strerror or exc} ({keep}). Free disk space")
            if self.cfg.save.on_error == "continue" and reason in ("interval", "request"):
                self._status(message + "; training goes on without this checkpoint (save.on_error = continue).",
                             "error")
                return None
            raise CheckpointWriteError(message + ", then resume with --resume.") from None
        best = self._best_step()
        protect = (ckpt.checkpoint_name(best),) if best is not None else ()
        removed = ckpt.prune_checkpoints(self.paths.checkpoints, self.cfg.save.keep, protect=protect)
        self._last_checkpoint_step = self.step
        self.emit(CheckpointSaved(step=self.step, path=str(path), reason=reason,
                                  removed=tuple(str(p) for p in removed), best_step=best))
        return path

    def _best_step(self) -> int | None:
        """The best checkpoint's step while save.keep_best keeps it."""
        if self.validation is None or not self.cfg.save.keep_best:
            return None
        return self.validation.best_step

    def validate(self) -> None:
        """Measure the validation loss now; a new best is kept as a checkpoint (save.keep_best)."""
        self._flush()
        assert self.validation is not None
        mean_step = sum(self._recent_step_s) / len(self._recent_step_s) if self._recent_step_s else None
        with self._session().export_weights():  # schedule-free: the averaged weights the files hold
            event, improved = self.validation.evaluate(
                self.step, run_seconds=time.perf_counter() - self._loop_started, mean_step_s=mean_step)
        if self._session().accelerator.is_main_process:
            self.emit(event)
        if improved and self.cfg.save.keep_best and self._last_checkpoint_step != self.step:
            self.save_checkpoint("best")

    def load_checkpoint(self, path: Path) -> None:
        s = self._session()
        loaded = ckpt.load_checkpoint(path)
        saved = loaded.state.config_digest
        now = config_digest(self.cfg, s.dataset.fingerprint(), processes=s.accelerator.num_processes)
        breaking, harmless = describe_differences(saved, now)
        if breaking:
            listing = "\n".join(f"  - {line}" for line in breaking)
            raise ResumeRefused(
                f"cannot resume from {path}: these changes since it was saved would make the run a different "
                f"one:\n{listing}\nUndo them, or start a new run without --resume.")
        for line in harmless:
            self._status(f"resuming with a changed setting: {line}")
        s.restore(loaded, self._status)
        self.step = loaded.state.step
        self.micro_batch = loaded.state.micro_batch
        self.skipped_steps = loaded.state.skipped_steps
        if self.validation is not None:
            self.validation.restore(loaded.state.best_step, loaded.state.best_val_loss)
        self._last_checkpoint_step = self.step
        self.resumed_from = path
        self._status(f"resumed from {path.name} (step {self.step})")

    def sample(self) -> None:
        """Draw the sample prompts now; every request ends in pictures or a message saying why not."""
        self._flush()
        s = self._session()
        if not s.accelerator.is_main_process:
            return
        from loratui.engine.sample_prompts import prompts_for_run
        from loratui.engine.sampling import generate_samples

        chosen = prompts_for_run(self.cfg, [(item.rel, item.caption) for item in s.dataset.items])
        if not chosen.prompts:
            self._status(f"step {self.step}: {chosen.reason}", "warning")
            return
        if not self.cfg.sample.prompts:
            self._status(f"step {self.step}: {chosen.describe()}")
        out_dir = self.paths.samples / ckpt.checkpoint_name(self.step)
        try:
            with s.sampling_weights():
                for index, result in enumerate(generate_samples(s, self.cfg, out_dir, chosen.prompts)):
                    self.emit(SampleReady(step=self.step, path=str(result.path), prompt=result.prompt,
                                          seed=result.seed, source=chosen.sources[index]))
        except torch.OutOfMemoryError:
            # A sample is never worth the run: skip it and keep training.
            if s.accelerator.device.type == "cuda":
                torch.cuda.empty_cache()
            self._status(f"step {self.step}: samples skipped, out of GPU memory (lower sample.width/height)",
                         "warning")
        except Exception as exc:  # noqa: BLE001 - a failed picture must say so, never end a paid run
            log.exception("sample at step %d failed", self.step)
            self._status(f"step {self.step}: the sample could not be made: {type(exc).__name__}: {exc} "
                         f"(details in {self.paths.log_file})", "error")
        s.unet.train()

    def export(self) -> Path:
        from loratui.engine.export import export_lora

        s = self._session()
        path = self.paths.lora_file(self.cfg)
        if s.accelerator.is_main_process:
            with s.export_weights():
                export_lora(s, self.cfg, path, steps=self.step, epoch=self.epoch, fmt=self.cfg.save.format,
                            started_at=self.started_at, samples_dir=self.paths.samples)
                self._status(f"saved {path}")
                if s.ema is not None:
                    ema_path = path.with_name(f"{path.stem}-ema{path.suffix}")
                    with s.ema.applied():
                        export_lora(s, self.cfg, ema_path, steps=self.step, epoch=self.epoch,
                                    fmt=self.cfg.save.format, started_at=self.started_at,
                                    samples_dir=self.paths.samples)
                    self._status(f"saved {ema_path} (EMA of the weights, decay {self.cfg.train.ema_decay:g})")
        return path

    def cleanup(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    # ---------------------------------------------------------------- helpers
    def _session(self) -> TrainingSession:
        if self.session is None:
            raise RuntimeError("Trainer.setup() has not run")
        return self.session

    def _status(self, text: str, level: str = "info", progress: float | None = None) -> None:
        getattr(log, "warning" if level == "warning" else "info")(text)
        self.emit(Status(text=text, level=level, progress=progress))


class ResumeRefused(UserError):
    pass


class OutOfMemory(UserError):
    pass


class CheckpointWriteError(UserError):
    pass
