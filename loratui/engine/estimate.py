"""How big and how long a run will be, before it starts (wizard Review, ``loratui bench``)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loratui.commands import CommandChannel
from loratui.config import ProjectConfig

if TYPE_CHECKING:
    import torch


@dataclass
class RunEstimate:
    total_steps: int
    seconds_per_step: float | None
    peak_memory_mb: float | None
    measured: bool
    note: str
    samples_per_s: float | None = None
    device: str = ""
    step_times: list[float] = field(default_factory=list)

    @property
    def total_seconds(self) -> float | None:
        return None if self.seconds_per_step is None else self.seconds_per_step * self.total_steps


def count_trainable_params(project_dir: Path, cfg: ProjectConfig) -> int:
    """LoRA parameters for this config, counted on an empty (meta-device) model: no weights are loaded."""
    import torch

    from loratui.engine.build import base_model_folder
    from loratui.lora.inject import inject_lora
    from loratui.models.probe import probe_model
    from loratui.project import ProjectPaths

    paths = ProjectPaths(Path(project_dir))
    spec = paths.model_spec(cfg)
    folder = base_model_folder(paths, cfg)
    if folder is None:
        raise ValueError(f"{cfg.model.base}: the count needs a local diffusers folder; it is shown once training "
                         "has loaded the model")
    family = (probe_model(spec, config_source=paths.config_source(cfg)).family if cfg.model.family == "auto"
              else cfg.model.family)
    with torch.device("meta"):
        total = inject_lora(_empty_denoiser(folder, family), component="unet", family=family,
                            preset=cfg.lora.preset, rank=cfg.lora.rank, alpha=cfg.lora.alpha, kind=cfg.lora.type,
                            lokr_factor=cfg.lora.lokr_factor).num_parameters()
        if cfg.lora.train_text_encoder:
            total += _count_text_encoders(folder, family, cfg)
    return total


def _empty_denoiser(folder: Path, family: str) -> torch.nn.Module:
    """The family's UNet or transformer built from the folder's config, on whatever device is current."""
    from diffusers import (
        ChromaTransformer2DModel,
        Flux2Transformer2DModel,
        FluxTransformer2DModel,
        QwenImageTransformer2DModel,
        SD3Transformer2DModel,
        UNet2DConditionModel,
        ZImageTransformer2DModel,
    )

    cls, sub = {"flux": (FluxTransformer2DModel, "transformer"),
                "sd3": (SD3Transformer2DModel, "transformer"),
                "zimage": (ZImageTransformer2DModel, "transformer"),
                "qwen_image": (QwenImageTransformer2DModel, "transformer"),
                "chroma": (ChromaTransformer2DModel, "transformer"),
                "flux2_klein": (Flux2Transformer2DModel, "transformer")}.get(family, (UNet2DConditionModel, "unet"))
    return cls.from_config(cls.load_config(folder, subfolder=sub))


def _count_text_encoders(folder: Path, family: str, cfg: ProjectConfig) -> int:
    """The CLIP encoders' LoRA (T5 never gets one): CLIP-L, and CLIP-G with its projection for SDXL/SD3."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loratui.lora.inject import inject_lora
    from loratui.lora.naming import components_for

    total = 0
    for index, component in enumerate(components_for(family)[1:]):
        sub = "text_encoder" if index == 0 else f"text_encoder_{index + 1}"
        projected = family == "sd3" or (family == "sdxl" and index == 1)
        cls = CLIPTextModelWithProjection if projected else CLIPTextModel
        te = cls(CLIPTextConfig.from_pretrained(folder / sub))
        total += inject_lora(te, component=component, family=family, preset=cfg.lora.preset, rank=cfg.lora.rank,
                             alpha=cfg.lora.alpha, kind=cfg.lora.type,
                             lokr_factor=cfg.lora.lokr_factor).num_parameters()
    return total


def estimate_run(project_dir: Path, cfg: ProjectConfig, *, steps: int = 4) -> RunEstimate:
    """Time a few real steps of this project on this machine (loads the model and fills the latent
    cache, which the real run then reuses)."""
    from loratui.engine.trainer import Trainer
    from loratui.events import Event

    def discard(event: Event) -> None:
        pass

    trainer = Trainer(Path(project_dir), cfg, emit=discard, commands=CommandChannel())
    try:
        trainer.setup()
        s = trainer.session
        assert s is not None
        total = trainer.total_steps
        import torch

        device = s.accelerator.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(max(2, steps)):
            t0 = time.perf_counter()
            trainer.run_steps(1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        from loratui.engine.memory import memory_snapshot

        mem = memory_snapshot(device)
        peak = mem.gpu_peak_mb if mem.gpu_peak_mb is not None else mem.ram_mb
        per_step = statistics.median(times[1:])  # the first step pays one-off allocation and warm-up
        images = cfg.train.batch_size * cfg.train.grad_accum
        note = (f"measured over {len(times) - 1} steps after a warm-up step on {device}; "
                f"{'GPU peak allocated' if mem.gpu_peak_mb is not None else 'process RAM'} shown")
        return RunEstimate(total, per_step, peak, True, note, images / per_step, str(device), times)
    finally:
        trainer.cleanup()


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"


def estimate_rows(est: RunEstimate) -> list[tuple[str, str]]:
    rows = [("device", est.device), ("total steps", str(est.total_steps))]
    if est.seconds_per_step is not None:
        rows.append(("s/step", f"{est.seconds_per_step:.3f}"))
        rows.append(("samples/s", f"{est.samples_per_s:.2f}"))
        rows.append(("projected run", format_duration(est.total_seconds or 0)))
    if est.peak_memory_mb is not None:
        rows.append(("peak memory", f"{est.peak_memory_mb:,.0f} MiB"))
    rows.append(("note", est.note))
    return rows


def render_estimate(est: RunEstimate):
    from rich.table import Table

    table = Table(title="loratui bench", show_header=False)
    for label, value in estimate_rows(est):
        table.add_row(label, value)
    return table
