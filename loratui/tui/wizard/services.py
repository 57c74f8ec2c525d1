"""The slow work behind the wizard, behind one small seam.

Each function here runs in a thread worker and imports its heavy module
(PIL walks, torch, diffusers) only when called, so the wizard is on screen
before any of it loads. Tests pass their own ``Services`` to make the
results instant and fixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from loratui.config import ProjectConfig
    from loratui.data.scan import ScanReport

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Estimate:
    """What the Review step shows about a run; mirrors the engine's RunEstimate."""

    total_steps: int
    seconds_per_step: float | None
    peak_memory_mb: float | None
    measured: bool
    note: str


def scan(images_dir: Path, cfg: ProjectConfig, progress: Progress | None = None,
         project_dir: Path | None = None) -> ScanReport:
    if project_dir is not None:
        # Every concept of the project (or data.images alone), as training will see them.
        from loratui.data.concepts import scan_project

        return scan_project(cfg, project_dir, progress=progress)
    from loratui.data.scan import scan_images

    return scan_images(images_dir, resolution=cfg.data.resolution, caption_extension=cfg.data.caption_extension,
                       bucket_step=cfg.data.bucket_step, trigger_word=cfg.data.trigger_word, progress=progress)


def probe(spec: str, config_source: str | None, allow_pickle: bool) -> Any:
    """ModelInfo for ``spec``; raises ``ModelLoadError`` (or ValueError) with the loader's message."""
    from loratui.models.probe import probe_model

    return probe_model(spec, config_source=config_source, allow_pickle=allow_pickle)


def model_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions whose message is meant for the user, not a bug's traceback."""
    from loratui.models.probe import ModelLoadError

    return (ModelLoadError, ValueError, OSError)


def count_params(project_dir: Path, cfg: ProjectConfig) -> int | None:
    """Trainable LoRA parameters, or None while the engine cannot count them yet."""
    try:
        from loratui.engine.estimate import count_trainable_params
    except ImportError:
        return None
    return int(count_trainable_params(project_dir, cfg))


def estimate(project_dir: Path, cfg: ProjectConfig, total_steps: int, family: str | None, *,
             measure: bool) -> Estimate:
    """A rough estimate at once; a measured one (a few real steps, which loads the model) on request.

    The measurement runs ``loratui bench`` in a child process on the saved config: the model and,
    on a GPU, the CUDA context and cached memory then leave with it instead of staying in the TUI
    beside the training process; and a crash while measuring cannot take the TUI down.
    """
    if not measure:
        return rough_estimate(cfg, total_steps, family)
    import subprocess
    import sys

    from loratui.engine.child import child_env

    argv = [sys.executable, "-m", "loratui", "bench", str(project_dir), "--json", "--steps", "4"]
    done = subprocess.run(argv, capture_output=True, text=True, env=child_env(), start_new_session=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1].removeprefix("loratui: ") if lines else f"exit code {done.returncode}")
    run = json.loads(done.stdout.strip().splitlines()[-1])
    return Estimate(run["total_steps"], run["seconds_per_step"], run["peak_memory_mb"], run["measured"],
                    run["note"])


# Training cost of one image per step, from the design notes: SD1.5 ≈ 1.7 TFLOP
# at 512 px, SDXL ≈ 14 TFLOP at 1024 px; the cost grows with the pixel count.
# The transformers: 2 FLOP per parameter and token forward, about twice that for a LoRA step;
# FLUX.1-dev 12 B parameters on 4096 image + 512 text tokens, SD3.5-Medium 2.5 B on 4096 + 333,
# Chroma1-HD 8.9 B (FLUX.1-schnell's blocks without their modulation) on 4096 + 512, FLUX.2-klein-base-4B
# 4 B on 4096 + 512.
_TFLOP_PER_IMAGE = {"sd1": (1.7, 512), "sd2": (1.7, 512), "sdxl": (14.0, 1024), "flux": (220.0, 1024),
                    "sd3": (44.0, 1024),
                    "zimage": (103.0, 1024),  # 6.15 B on 4096 image + about 100 caption tokens
                    "qwen_image": (350.0, 1024),  # 20.4 B on 4096 image + about 200 caption tokens
                    "chroma": (165.0, 1024), "flux2_klein": (75.0, 1024)}
# What a rented A100 or 4090 sustains on these UNets in half precision.
_ASSUMED_TFLOPS = 60.0
# The published model these figures are for, as the estimate's note names it.
_REFERENCE_MODEL = {"sd1": "SD 1.5", "sd2": "SD 2.1", "sdxl": "SDXL 1.0", "flux": "FLUX.1-dev (12 B parameters)",
                    "sd3": "SD3.5-Medium (2.5 B parameters; Large has 8 B)",
                    "zimage": "Z-Image-Turbo (6.15 B parameters)",
                    "qwen_image": "Qwen-Image (20.4 B parameters)",
                    "chroma": "Chroma1-HD (8.9 B parameters)",
                    "flux2_klein": "FLUX.2-klein-base-4B (4 B parameters; 9B has 9 B)"}


def rough_estimate(cfg: ProjectConfig, total_steps: int, family: str | None = None) -> Estimate:
    """Arithmetic from published model sizes, for a full-size model on a recent GPU.

    It is only meant to tell a 20-minute run from a 20-hour one; the engine's
    measured estimate replaces it. Memory is the planner's (``plan_memory``), shown beside it.
    """
    if cfg.model.base.startswith("builtin:"):
        return Estimate(total_steps, None, None, False,
                        "built-in tiny model: the full-size arithmetic does not apply; "
                        "Measure (ctrl+e) times a few steps on this machine")
    family = family or (cfg.model.family if cfg.model.family != "auto" else "sd1")
    tflop, side = _TFLOP_PER_IMAGE.get(family, _TFLOP_PER_IMAGE["sd1"])
    scale = (cfg.data.resolution / side) ** 2
    seconds = tflop * scale * cfg.train.batch_size * cfg.train.grad_accum / _ASSUMED_TFLOPS
    if cfg.train.precision == "no":
        seconds *= 4.0  # fp32 gives up the half-precision tensor-core rate
    if cfg.train.gradient_checkpointing:
        share = 1.0 / cfg.train.gradient_checkpointing_every  # of the blocks recomputed
        seconds *= 1.0 + 0.7 * share
    return Estimate(total_steps, seconds, None, False,
                    f"rough arithmetic for a full-size {_REFERENCE_MODEL.get(family, family)} on a GPU doing "
                    f"~{_ASSUMED_TFLOPS:.0f} TFLOP/s; "
                    "Measure (ctrl+e) times real steps on this machine")


def plan_memory(project_dir: Path, cfg: ProjectConfig) -> list[str]:
    """The memory planner's lines for Review (builds the model's architecture without weights; seconds)."""
    from loratui.memory.project_plan import review_lines

    return review_lines(project_dir, cfg)


@dataclass
class Services:
    """The slow functions the wizard calls from its workers."""

    scan: Callable[..., Any] = scan
    probe: Callable[[str, "str | None", bool], Any] = probe
    model_errors: Callable[[], tuple[type[BaseException], ...]] = model_error_types
    count_params: Callable[[Path, Any], "int | None"] = count_params
    estimate: Callable[..., Estimate] = estimate
    plan_memory: Callable[[Path, Any], "list[str]"] = plan_memory
