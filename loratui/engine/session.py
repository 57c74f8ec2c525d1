"""Everything a run holds in memory: accelerator, model, LoRA, data, optimizer, and what
one step does with them (loss, conditioning, the optimizer step, the weights files hold).

``engine/build.py`` makes a session from a project.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from loratui.config import ProjectConfig
from loratui.data.scan import ScanReport
from loratui.engine.checkpoint import LoadedCheckpoint, set_rng_state
from loratui.engine.dataset import Batch, Item, PreparedDataset
from loratui.engine.ema import LoraEMA
from loratui.engine.latent_cache import CachedText, TextCache
from loratui.engine.optimizers import averaged_weights, is_schedule_free
from loratui.engine.step import Conditioning, diffusion_loss, to_device
from loratui.lora.layer import LoRANetwork
from loratui.models.loader import LoadedModel
from loratui.models.text import encode_flow_captions, encode_tokens, sdxl_add_time_ids, tokenize

log = logging.getLogger("loratui")

StatusFn = Callable[..., None]


@dataclass
class TrainingSession:
    cfg: ProjectConfig
    accelerator: Any
    model: LoadedModel
    networks: dict[str, LoRANetwork]
    dataset: PreparedDataset
    scan: ScanReport
    weight_dtype: torch.dtype
    text_cache: TextCache | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any = None
    trained_text_encoders: list[torch.nn.Module] = field(default_factory=list)
    held_out: list[Item] = field(default_factory=list)
    """Validation images (validation.split or .folder), encoded like the training ones, never trained on."""
    holdout_note: str = ""
    ema: LoraEMA | None = None  # train.ema_decay > 0

    def __post_init__(self) -> None:
        self._params = self.lora_parameters()

    @property
    def unet(self) -> torch.nn.Module:
        return self.model.unet

    @property
    def noise_scheduler(self) -> Any:
        return self.model.noise_scheduler

    @property
    def trainable_params(self) -> int:
        return sum(n.num_parameters() for n in self.networks.values())

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n in self.networks.values() for p in n.parameters()]

    def make_lr_scheduler(self, total_steps: int) -> None:
        from diffusers.optimization import get_scheduler

        t = self.cfg.train
        if is_schedule_free(self.optimizer):
            # Schedule-free has no schedule; it warms up inside the optimizer.
            self.lr_scheduler = get_scheduler("constant", self.optimizer)
            return
        self.lr_scheduler = get_scheduler(t.lr_scheduler, self.optimizer, num_warmup_steps=t.warmup_steps,
                                          num_training_steps=total_steps)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------ objective
    def loss(self, latents: torch.Tensor, cond: Conditioning, generator: torch.Generator, *,
             timesteps: torch.Tensor | None = None, noise: torch.Tensor | None = None,
             pixel_weight: torch.Tensor | None = None, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The family's training loss for one micro-batch; ``timesteps`` (0..999) and ``noise`` fixed only by
        evaluation (a flow model reads a timestep t as σ = t / 1000)."""
        t = self.cfg.train
        if self.model.is_flow:
            from loratui.engine.flow import flow_matching_loss, resolve_sampling
            from loratui.models.text import family_module

            return flow_matching_loss(
                family_module(self.model.family), self.unet, latents, cond, generator,
                sampling=resolve_sampling(t.timestep_sampling, self.model.family), sigmoid_scale=t.sigmoid_scale,
                shift=t.flow_shift, scheduler_config=self.noise_scheduler.config, guidance=t.guidance_scale,
                dtype=self.weight_dtype, sigmas=None if timesteps is None else timesteps.float() / 1000,
                noise=noise, pixel_weight=pixel_weight, sample_weight=sample_weight)
        return diffusion_loss(self.unet, self.noise_scheduler, latents, cond, generator,
                              prediction_type=self.model.prediction_type, noise_offset=t.noise_offset,
                              min_snr_gamma=t.min_snr_gamma, timesteps=timesteps, noise=noise,
                              unet_dtype=self.weight_dtype, pixel_weight=pixel_weight, sample_weight=sample_weight)

    # ------------------------------------------------------------ conditioning
    def conditioning(self, batch: Batch) -> Conditioning:
        device = self.accelerator.device
        if self.model.is_flow:
            return self._flow_conditioning(batch.captions)
        if self.text_cache is None:
            emb = encode_tokens(self.model, tokenize(self.model, batch.captions), clip_skip=self.cfg.model.clip_skip)
            hidden, pooled = emb.hidden.to(device), emb.pooled
        else:
            cached = self.text_cache.get_many(batch.captions, self._encode_for_cache)
            hidden = to_device(torch.stack([c.hidden for c in cached]), device)
            pooled = torch.stack([c.pooled for c in cached]) if cached[0].pooled is not None else None
        time_ids = None
        if self.model.family == "sdxl":
            time_ids = to_device(torch.stack([
                sdxl_add_time_ids(o, c, t) for o, c, t in zip(batch.original_sizes, batch.crops, batch.target_sizes)
            ]), device)
            pooled = to_device(pooled, device)
        return Conditioning(hidden.to(self.weight_dtype), pooled, time_ids)

    def _flow_conditioning(self, captions: list[str]) -> Conditioning:
        device = self.accelerator.device
        if self.text_cache is None:
            emb = encode_flow_captions(self.model, captions, t5_max_length=self.cfg.model.t5_max_length)
            hidden, pooled = emb.hidden, emb.pooled
        else:
            cached = self.text_cache.get_many(captions, self._encode_for_cache)
            hidden = to_device(torch.stack([c.hidden for c in cached]), device)
            pooled = to_device(torch.stack([c.pooled for c in cached]), device) if cached[0].pooled is not None \
                else None  # FLUX.2 klein has no pooled vector
        return Conditioning(hidden.to(device, self.weight_dtype),
                            pooled.to(device, self.weight_dtype) if pooled is not None else None)

    def _encode_for_cache(self, captions: list[str]) -> list[CachedText]:
        with torch.no_grad():
            if self.model.is_flow:
                emb = encode_flow_captions(self.model, captions, t5_max_length=self.cfg.model.t5_max_length)
            else:
                emb = encode_tokens(self.model, tokenize(self.model, captions), clip_skip=self.cfg.model.clip_skip)
        hidden = emb.hidden.float().cpu()
        pooled = emb.pooled.float().cpu() if emb.pooled is not None else None
        return [CachedText(hidden[i], pooled[i] if pooled is not None else None) for i in range(len(captions))]

    # ------------------------------------------------------------ optimizer
    def optimizer_step(self, max_grad_norm: float) -> torch.Tensor:
        """Clip, step, advance the schedule. Returns a 0-dim device tensor: 1.0 when the update was
        skipped because the gradient was not finite. With the fused AdamW the skip happens on the
        device, so the step never waits for the GPU; other optimizers check on the host."""
        params = self._params
        if max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(params, max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params
                                                         if p.grad is not None]))
        found_inf = (~torch.isfinite(norm)).to(torch.float32)
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        if self._device_side_skip:
            inner.found_inf = found_inf
            self.optimizer.step()
        elif not bool(found_inf):
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(found_inf)
        return found_inf

    # ------------------------------------------------------------ which weights
    @contextlib.contextmanager
    def export_weights(self) -> Iterator[None]:
        """The weights a file should hold: schedule-free's average, otherwise the trained ones."""
        with averaged_weights(self.optimizer, self._params):
            yield

    @contextlib.contextmanager
    def sampling_weights(self) -> Iterator[None]:
        """The weights to draw samples with: the EMA when it is on, otherwise as ``export_weights``."""
        with self.export_weights():
            if self.ema is None:
                yield
            else:
                with self.ema.applied():
                    yield

    @property
    def _device_side_skip(self) -> bool:
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        # A GradScaler (fp16) sets found_inf itself; only a plain fused AdamW takes ours.
        return (isinstance(inner, torch.optim.AdamW) and bool(inner.defaults.get("fused"))
                and getattr(self.accelerator, "scaler", None) is None)

    # ------------------------------------------------------------ state
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for net in self.networks.values():
            out.update(net.state_dict())
        return out

    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for net in self.networks.values():
            own = {k: v for k, v in state.items() if k.split(".", 1)[0] in net}
            net.load_state_dict(own, strict=True)

    def files_state(self) -> dict[str, torch.Tensor]:
        """The LoRA as files should hold it (schedule-free: its average), copied out."""
        with self.export_weights():
            return {k: v.clone() for k, v in self.lora_state_dict().items()}

    def resume_extra(self) -> dict[str, dict[str, torch.Tensor]]:
        """What resume needs beyond lora.safetensors: the EMA, and schedule-free's training weights."""
        extra = {}
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()
        if is_schedule_free(self.optimizer):
            extra["lora_train"] = {k: v.clone() for k, v in self.lora_state_dict().items()}
        return extra

    def restore(self, loaded: LoadedCheckpoint, status: StatusFn) -> None:
        """Weights, optimizer, EMA, schedule and random state as a checkpoint saved them."""
        self.load_lora_state_dict(loaded.extra.get("lora_train", loaded.lora))
        self.optimizer.load_state_dict(loaded.optimizer)
        if self.ema is not None:
            if "ema" in loaded.extra:
                self.ema.load_state_dict(loaded.extra["ema"])
            else:
                self.ema.reset()
                status("this checkpoint has no EMA (train.ema_decay was off); the average starts from "
                       "the resumed weights", "warning")
        self.lr_scheduler.load_state_dict(loaded.scheduler)
        set_rng_state(loaded.rng)

    def close(self) -> None:
        self.accelerator.free_memory()
